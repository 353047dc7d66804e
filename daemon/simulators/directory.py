"""The people and teams both simulators know by default.

As on a real site wired by the original integration, an Ivanti ``Owner`` login
is the xMatters person's ``targetName`` and an Ivanti ``OwnerTeam`` name is an
xMatters group name. Tests and the demo may pass their own directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Person:
    login: str  # Ivanti login id == xMatters targetName
    first: str
    last: str
    teams: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("Mobile App", "Work Email")

    @property
    def email(self) -> str:
        return f"{self.login.lower()}@example.com"


@dataclass(frozen=True)
class Directory:
    people: tuple[Person, ...] = field(default_factory=tuple)
    teams: tuple[str, ...] = field(default_factory=tuple)

    def person(self, login: str) -> Person | None:
        for p in self.people:
            if p.login.casefold() == login.casefold():
                return p
        return None

    def members(self, team: str) -> list[Person]:
        return [p for p in self.people if any(t.casefold() == team.casefold() for t in p.teams)]


DEFAULT_DIRECTORY = Directory(
    people=(
        Person("jsmith", "Jane", "Smith", ("Network Operations",)),
        Person("bwong", "Ben", "Wong", ("Network Operations",)),
        Person("apatel", "Asha", "Patel", ("Database Team",)),
        Person("mgarcia", "Miguel", "Garcia", ("Database Team", "Service Desk")),
        Person("lchen", "Li", "Chen", ("Service Desk",)),
        Person("obrien", "Siobhan", "O'Brien", ("Service Desk",)),
    ),
    teams=("Network Operations", "Database Team", "Service Desk"),
)
