"""A bench's ``--config NAME=WORDS``: one server configuration of several that a bench alternates, read the same
way by ``serve_gpu.py``, ``trace_lone.py`` and ``gpu_like.py``.

The words are split as a shell splits them (``'old=PYTHONPATH=/x/operator --buckets=1,2,4'``); leading
``VAR=value`` words go into the server's environment, the rest are ``trtop serve`` flags. A word holding ``,--`` is
refused: flags once went comma-separated to one of these benches, and such a word now would carry a flag inside an
environment value or another flag's value (the thirty-sixth session's ``oldi1=PATH=...,--instances=1`` ran with two
instances, its flag a part of ``PATH``).
"""
from __future__ import annotations

import re
import shlex

# Every bench's server keeps its cores awake (``--keep-awake on``) unless a config or the caller's environment says
# otherwise: ``auto`` spins only on cores that are a pod's own (a CPU limit of as many), and a bench's server runs
# without a limit on cores given to it (the GPU host: its client on cores of its own; the development machine: the
# client in the bench's own session, the one cgroup whose tasks a SCHED_IDLE spinner yields to). The figures are
# those of a pod with its own cores, where ``auto`` spins too.
SERVER_ENV = {"TRTOP_KEEP_AWAKE": "on"}

ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")  # a config word for the server's environment
NAME = re.compile(r"\w[\w.]*")


def config_words(text: str) -> tuple[str, list[str]]:
    """``NAME=WORDS`` -> (name, its words as a shell splits them), a word holding ``,--`` refused."""
    name, sep, rest = text.partition("=")
    if not sep or not NAME.fullmatch(name):
        raise ValueError(f"--config takes NAME=WORDS, got {text!r}")
    words = shlex.split(rest)
    for word in words:
        if ",--" in word:
            raise ValueError(f"--config {text!r}: the word {word!r} holds ',--'; a config's words are split at "
                             "spaces, so write each flag as a word of its own")
    return name, words


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """A config's leading ``VAR=value`` words (the server's environment) apart from its ``trtop serve`` flags
    (a flag's own ``=`` is no such word)."""
    env: dict[str, str] = {}
    for i, word in enumerate(words):
        if not ENV_WORD.match(word):
            return env, words[i:]
        var, _, value = word.partition("=")
        env[var] = value
    return env, []


def parse_config(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``NAME=[VAR=value ...] [FLAGS ...]`` -> (name, the server's environment, its flags)."""
    name, words = config_words(text)
    return (name, *split_env(words))


def server_env(base: dict[str, str]) -> dict[str, str]:
    """A bench server's environment: ``base`` (the caller's, or the caller's plus a config's) over ``SERVER_ENV``."""
    return {**SERVER_ENV, **base}
