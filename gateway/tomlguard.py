"""Read an uploaded TOML file without letting it take the daemon down (issue 15).

A 100 KB file of dotted keys or of nested arrays made the web UI's import answer 500 with a 3,000-line
traceback, or take 75 s and leave the daemon at 9.5 GB. Here the file is first parsed in a short-lived child
process with a memory limit (``RLIMIT_AS``), a CPU limit (``RLIMIT_CPU``) and a wall-clock timeout, which also
measures its nesting depth and its number of keys; only a file that passes is handed back, as text, for the
caller to parse in-process. The daemon's heap never holds more than the upload itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass


class TomlGuardError(ValueError):
    """The file was refused; the message says why and what is allowed."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 1_000_000     # a config of a few thousand meters; far beyond what a technician uploads
    max_depth: int = 8             # a gateway config nests 3 deep ([[meters]] -> table -> value)
    max_keys: int = 100_000
    cpu_s: int = 1
    wall_s: float = 5.0            # a loaded machine may take long to start the child; the CPU limit is the bound
    memory_mb: int = 512           # address space of the child (Python itself takes ~30 MB)


# The child: limits first, then parse, then measure depth and keys without recursion.
_CHILD = r"""
import json, resource, sys
cpu, memory = int(sys.argv[1]), int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
def answer(**kw):
    sys.stdout.write(json.dumps(kw)); sys.exit(0)
try:
    import tomllib
    data = tomllib.loads(sys.stdin.buffer.read().decode("utf-8-sig"))
except UnicodeDecodeError as exc:
    answer(error="utf8", detail=f"byte {exc.start} is 0x{exc.object[exc.start]:02x}")
except RecursionError:
    answer(error="depth")
except MemoryError:
    answer(error="memory")
except tomllib.TOMLDecodeError as exc:
    answer(error="syntax", detail=str(exc))
depth, keys, stack = 0, 0, [(data, 1)]
while stack:
    value, level = stack.pop()
    depth = max(depth, level)
    if isinstance(value, dict):
        keys += len(value)
        stack.extend((v, level + 1) for v in value.values())
    elif isinstance(value, list):
        stack.extend((v, level + 1) for v in value)
answer(depth=depth, keys=keys)
"""


def checked_text(raw: bytes, limits: Limits = Limits()) -> str:
    """``raw`` as text once a child process has parsed it within ``limits``.

    :raises TomlGuardError: too large, too deep, too many keys, too slow, not UTF-8 or not TOML.
    """
    if len(raw) > limits.max_bytes:
        raise TomlGuardError(f"the file is {len(raw):,} bytes; at most {limits.max_bytes:,} are read")
    # tomllib takes time quadratic in the parts of a dotted key (a.a.a... = 1: 100 KB took seconds of CPU), so
    # those are counted here first, in one pass over the lines: a key or a [table.header] of more parts than
    # the depth allowed is refused before anything is parsed
    for number, line in enumerate(raw.splitlines(), 1):
        line = line.strip()
        key = line[1:].split(b"]", 1)[0] if line.startswith(b"[") else line.split(b"=", 1)[0] if b"=" in line else b""
        if key.count(b".") >= limits.max_depth:
            raise TomlGuardError(f"line {number}: a key of {key.count(b'.') + 1} dotted parts; tables are nested too "
                                 f"deeply (at most {limits.max_depth} levels are read)")
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, str(limits.cpu_s), str(limits.memory_mb)],
                              input=raw, capture_output=True, timeout=limits.wall_s, check=False)
    except subprocess.TimeoutExpired:
        raise TomlGuardError(f"reading the file took longer than {limits.wall_s:g} s: it is too complex") from None
    try:
        answer = json.loads(done.stdout or b"{}")
    except ValueError:
        answer = {}
    error = answer.get("error")
    if error == "syntax":
        raise TomlGuardError(f"TOML syntax error: {answer.get('detail', '')}")
    if error == "utf8":
        raise TomlGuardError(f"not UTF-8 text ({answer.get('detail', '')}): save it as UTF-8")
    if error == "depth" or answer.get("depth", 0) > limits.max_depth:
        raise TomlGuardError(f"tables or arrays are nested too deeply (at most {limits.max_depth} levels are read)")
    if answer.get("keys", 0) > limits.max_keys:
        raise TomlGuardError(f"the file has {answer['keys']:,} keys; at most {limits.max_keys:,} are read")
    if error is not None or "depth" not in answer:
        # killed by its CPU or memory limit (SIGXCPU, MemoryError) or failed otherwise
        raise TomlGuardError("the file needs more time or memory to read than a config may take: it is too complex")
    return raw.decode("utf-8-sig")
