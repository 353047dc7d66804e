"""Shell completion for bash and zsh, generated from the argparse parser itself.

``ivanti-xmatters completion bash`` / ``zsh`` prints a script; it is generated from the
same parser that parses the command line, so a new command or option is completed without
anyone editing a script, and no dependency (argcomplete, shtab) is needed for ~15 commands.
Completed: commands, their options, option choices (``--state``), nested actions
(``db upgrade``), and file names after ``--env-file`` / ``--keep-db``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

PROG = "ivanti-xmatters"
_FILE_OPTIONS = frozenset({"--env-file", "--keep-db"})


@dataclass
class _Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)
    metavar: str = ""


@dataclass
class _Command:
    name: str
    help: str
    options: list[_Option]
    actions: list[tuple[str, str]]  # nested sub-commands (db upgrade/current)


def _options(parser: argparse.ArgumentParser) -> list[_Option]:
    out: list[_Option] = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        choices = [str(c) for c in action.choices] if action.choices else []
        out.append(
            _Option(
                flags=list(action.option_strings),
                help=" ".join((action.help or "").split()),
                takes_value=action.nargs != 0,
                choices=choices,
                metavar=str(action.metavar or action.dest).lower(),
            )
        )
    return out


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(n, " ".join(helps.get(n, "").split()), p) for n, p in action.choices.items()]
    return []


def _model(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[_Command]]:
    commands = [
        _Command(name, help, _options(sub), _actions(sub))
        for name, help, sub in _subcommands(parser)
    ]
    return _options(parser), commands


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """Nested sub-commands (``db upgrade``) or the choices of the first positional
    (``completion bash``)."""
    nested = [(n, h) for n, h, _ in _subcommands(parser)]
    if nested:
        return nested
    for action in parser._actions:
        if not action.option_strings and action.choices:
            return [(str(c), "") for c in action.choices]
    return []


# --------------------------------------------------------------------------- bash


def _words(options: list[_Option], extra: Sequence[str] = ()) -> str:
    return " ".join([*extra, *(f for o in options for f in o.flags)])


def bash(parser: argparse.ArgumentParser) -> str:
    top, commands = _model(parser)
    value_cases: dict[str, str] = {}
    for option in top + [o for c in commands for o in c.options]:
        for flag in option.flags:
            if flag in _FILE_OPTIONS:
                value_cases[flag] = 'COMPREPLY=($(compgen -f -- "$cur")); return'
            elif option.choices:
                value_cases[flag] = (
                    f'COMPREPLY=($(compgen -W "{" ".join(option.choices)}" -- "$cur")); return'
                )
            elif option.takes_value and flag.startswith("--"):
                value_cases.setdefault(flag, "return")
    value_flags = "|".join(sorted(value_cases))  # their values are not commands
    lines = [
        f"# bash completion for {PROG}: source it, or save it as",
        f"#   /etc/bash_completion.d/{PROG} (or ~/.local/share/bash-completion/completions/{PROG})",
        "_ivanti_xmatters() {",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" sub="" i w',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w="${COMP_WORDS[i]}"',
        '        case "${COMP_WORDS[i-1]}" in',
        f"            {value_flags}) continue ;;",
        "        esac",
        '        case "$w" in -*) continue ;; esac',
        '        if [ -z "$cmd" ]; then cmd="$w"; elif [ -z "$sub" ]; then sub="$w"; fi',
        "    done",
        '    case "$prev" in',
    ]
    for flag, body in sorted(value_cases.items()):
        lines.append(f"        {flag}) {body} ;;")
    lines += ["    esac", '    case "$cmd" in']
    names = [c.name for c in commands]
    lines.append(f'        "") COMPREPLY=($(compgen -W "{_words(top, names)}" -- "$cur")) ;;')
    for command in commands:
        words = _words(command.options)
        if command.actions:
            actions = " ".join(n for n, _ in command.actions)
            lines.append(
                f'        {command.name}) if [ -z "$sub" ]; then '
                f'COMPREPLY=($(compgen -W "{actions} {words}" -- "$cur")); '
                f'else COMPREPLY=($(compgen -W "--env-file --help" -- "$cur")); fi ;;'
            )
        else:
            lines.append(
                f'        {command.name}) COMPREPLY=($(compgen -W "{words}" -- "$cur")) ;;'
            )
    lines += ["    esac", "}", f"complete -F _ivanti_xmatters {PROG}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- zsh


def _zsh_text(text: str) -> str:
    """Text inside a single-quoted zsh ``_arguments`` spec: no ``'``, ``[``, ``]``, ``:``."""
    text = re.sub(r"[\[\]]", "", text).replace(":", " -").replace("'", "")
    return text.replace("\\", "")


def _zsh_specs(options: list[_Option]) -> list[str]:
    specs: list[str] = []
    for option in options:
        help = _zsh_text(option.help)
        if option.choices:
            tail = f":{option.metavar}:({' '.join(option.choices)})"
        elif option.flags[0] in _FILE_OPTIONS:
            tail = ":file:_files"
        elif option.takes_value:
            tail = f":{_zsh_text(option.metavar)}:"
        else:
            tail = ""
        if len(option.flags) > 1:
            group = " ".join(option.flags)
            specs.append(f"'({group})'{{{','.join(option.flags)}}}'[{help}]{tail}'")
        else:
            specs.append(f"'{option.flags[0]}[{help}]{tail}'")
    return specs


def zsh(parser: argparse.ArgumentParser) -> str:
    top, commands = _model(parser)
    lines = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG}: save it as _{PROG} in a directory of $fpath",
        "# (e.g. /usr/local/share/zsh/site-functions), or source it after compinit.",
        "_ivanti_xmatters() {",
        "    local curcontext=$curcontext state line",
        "    local -a commands",
        "    commands=(",
    ]
    lines += [f"        '{c.name}:{_zsh_text(c.help)}'" for c in commands]
    lines += [
        "    )",
        "    _arguments -C \\",
        *(f"        {spec} \\" for spec in _zsh_specs(top)),
        "        '1:command:->command' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "        command) _describe -t commands 'ivanti-xmatters command' commands ;;",
        "        argument)",
        "            case $words[1] in",
    ]
    for command in commands:
        specs = _zsh_specs(command.options)
        if command.actions:
            actions = " ".join(f"{n}\\:'{_zsh_text(h) or n}'" for n, h in command.actions)
            specs.append(f'"1:action:(({actions}))"')
        lines.append(f"                {command.name}) _arguments {' '.join(specs)} ;;")
    lines += [
        "            esac ;;",
        "    esac",
        "}",
        'if [ "$funcstack[1]" = "_ivanti_xmatters" ]; then',
        '    _ivanti_xmatters "$@"',
        "else",
        f"    compdef _ivanti_xmatters {PROG}",
        "fi",
        "",
    ]
    return "\n".join(lines)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    return bash(parser) if shell == "bash" else zsh(parser)
