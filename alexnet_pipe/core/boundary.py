"""The one error boundary: what the command line says about an exception no stage turned into a UserError.

Every command runs inside it (the CLI's LazyGroup). A UserError is already one sentence. An OSError (a read-only
file system, no permission, a file where a directory belongs, no space) becomes one sentence naming the path,
what was being done to it, and why; a file a reader library rejected (JSON, LMDB, zip, pickle, UTF-8) names the
file where the traceback shows it; SIGTERM, SIGHUP or Ctrl-C that no stage cleaned up after says so. Anything
else is a bug in the tool: said as one, with the way to see its traceback. ALEXNET_PIPE_DEBUG=1 re-raises
everything with its traceback.
"""
from __future__ import annotations

import codecs
import errno
import linecache
import os
import re
import sys
from pathlib import Path

from alexnet_pipe.core import stopping
from alexnet_pipe.core.errors import Interrupted, UserError

DEBUG_VAR = "ALEXNET_PIPE_DEBUG"
BUG_EXIT = 70  # EX_SOFTWARE: the tool failed, not the input

# why, said for the errnos users meet; others use the system's own text
_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.ENOSPC: "no space is left on its device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EISDIR: "it is a directory where a file was expected",
    errno.ENOTDIR: "a part of it is a file where a directory was expected",
    errno.EEXIST: "something is already there",
    errno.ENOENT: "it does not exist",
    errno.ELOOP: "it is a loop of symbolic links",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENXIO: "it is a device or FIFO with no other end",
    errno.EIO: "the device reported an I/O error",
}

# functions (Python's own, or named in the failing line of ours) -> what was being done to the path
_DOING = {
    "mkdir": "create the directory", "makedirs": "create the directory", "touch": "create",
    "write_text": "write", "write_bytes": "write", "save": "write", "savefig": "write", "savez": "write",
    "read_text": "read", "read_bytes": "read", "load": "read", "fromfile": "read",
    "open": "open", "fdopen": "open", "unlink": "remove", "remove": "remove", "rmdir": "remove the directory",
    "rmtree": "remove", "rename": "rename", "replace": "rename", "link": "link", "hardlink_to": "link",
    "symlink_to": "create the link", "symlink": "create the link", "copyfile": "copy", "copy": "copy",
    "copy2": "copy", "copytree": "copy", "iterdir": "list", "listdir": "list", "scandir": "list", "glob": "list",
    "rglob": "list", "stat": "look at", "lstat": "look at", "fsync": "sync", "chmod": "change the mode of",
    "ftruncate": "grow", "truncate": "grow", "mkstemp": "create a file in", "mkdtemp": "create a directory in",
}
_STDLIB = ("pathlib", "shutil", "os", "tempfile", "genericpath", "posixpath")
_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_PATH_NAMES = ("path", "filename", "file", "fname", "folder", "directory", "target")


def debugging() -> bool:
    return os.environ.get(DEBUG_VAR, "") not in ("", "0")


def reader_errors() -> tuple[type, ...]:
    """What readers raise for a file that is damaged or not what was expected (libraries loaded so far only:
    importing LMDB or PIL here would put them on every command's start)."""
    import json
    import pickle
    import tarfile
    import zipfile
    kinds = [json.JSONDecodeError, UnicodeDecodeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
             tarfile.TarError]
    if "lmdb" in sys.modules:
        kinds.append(sys.modules["lmdb"].Error)
    if "PIL.Image" in sys.modules:
        kinds.append(sys.modules["PIL.Image"].UnidentifiedImageError)
    return tuple(kinds)


def explain(exc: BaseException, command: str) -> tuple[str, int]:
    """(one sentence, exit status) for an exception that reached the command line."""
    where = f"`alexnet-pipe {command}`" if command else "`alexnet-pipe`"
    if isinstance(exc, UserError):
        return _user_error(exc)
    if isinstance(exc, KeyboardInterrupt):
        return (f"{where} was interrupted by {stopping.received_name() or 'Ctrl-C'}; run it again to finish (the files it writes are "
                "replaced whole or not at all)"), stopping.exit_code(Interrupted.exit_code)
    if _out_of_memory(exc):
        return (f"{where} ran out of memory ({_text(exc)}): use a smaller batch, width or crop, fewer workers, or "
                "free some memory"), 1
    if isinstance(exc, OSError):
        return _os_error(exc, where), 1
    if isinstance(exc, reader_errors()):
        path = exc.filename if isinstance(exc, OSError) else _path_in(exc.__traceback__)
        what = f"read {path}" if path else "read a file"
        return f"{where} could not {what}: it is damaged or not the file expected ({_text(exc)})", 1
    return (f"{where} failed unexpectedly ({_text(exc)}): this is a bug in alexnet-pipe; run the same command with "
            f"{DEBUG_VAR}=1 to see its traceback, and report it"), BUG_EXIT


def _out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's allocator failing (a RuntimeError on the CPU, OutOfMemoryError on CUDA)."""
    text = str(exc)
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def printable_output() -> None:
    """Let stdout and stderr print any path: a name that is not UTF-8 reaches Python as surrogate escapes, which a
    strict UTF-8 stream refused with UnicodeEncodeError mid-command. Its original bytes are written instead (as
    `ls` does), and any other unencodable character as a backslash escape."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and stream.errors != _ERRORS:
            stream.reconfigure(errors=_ERRORS)


def _escape_or_backslash(exc: UnicodeEncodeError):
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(exc)


_ERRORS = "alexnet_pipe.printable"
codecs.register_error(_ERRORS, _escape_or_backslash)


def _user_error(exc: UserError) -> tuple[str, int]:
    code = getattr(exc, "exit_code", 1)
    message = str(exc)
    if isinstance(exc, Interrupted) and stopping.received() is not None:  # a signal, not Ctrl-C, stopped it
        message = re.sub(r"^interrupted\b", f"interrupted by {stopping.received_name()}", message)
        code = stopping.exit_code(code)
    return message, code


def _text(exc: BaseException) -> str:
    """The exception's message and then its type: 'Type: message' would put a second 'Error:' on the line."""
    text = " ".join(str(exc).split())
    return f"{text[:300]} [{type(exc).__name__}]" if text else type(exc).__name__


def _os_error(exc: OSError, where: str) -> str:
    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__).lower()
    if exc.filename is None:
        return f"{where} failed: {reason}"
    doing = _doing(exc)
    target = f"{exc.filename} to {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{where} could not {doing} {target}: {reason}"


def _frames(tb) -> list:
    frames = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames[::-1]  # innermost first


def _doing(exc: OSError) -> str:
    frames = _frames(exc.__traceback__)
    for tb in frames:  # Python's own file functions name the operation
        code = tb.tb_frame.f_code
        if Path(code.co_filename).stem in _STDLIB and code.co_name in _DOING:
            return _DOING[code.co_name]
    if frames:  # a C function called from the failing line (open(), os.replace(), np.save())
        line = linecache.getline(frames[0].tb_frame.f_code.co_filename, frames[0].tb_lineno)
        for name in _CALL.findall(line):
            if name in _DOING:
                return _DOING[name]
    return "write" if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT) else "use"


def _path_in(tb) -> str | None:
    """The file a reader was reading, from the innermost frame that holds one under a usual name."""
    for frame in _frames(tb):
        for name in _PATH_NAMES:
            value = frame.tb_frame.f_locals.get(name)
            if isinstance(value, (str, Path)) and str(value):
                return str(value)
    return None
