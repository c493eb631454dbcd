"""One safe-name rule for everything a user names (sweep, backbone, task, method), and paths built from them.

Names become folder and file names (Ray Tune experiments, artifacts, exports),
so they are checked once, before anything runs: letters, digits, ``_``, ``-``
and ``.``, starting with a letter or digit, never ``..``, never a path
separator. A backbone may carry one ``.tag`` (timm's ``vit_base_patch16_224.orig_in21k``).

The pattern alone is not the whole defence: :func:`inside` also resolves every
path built from names (symlinks included) and refuses one that lands outside
its folder.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from alore.errors import AloreError, ConfigError

# No '/', no '\\', no leading '.' or '-' (so not '.', '..', or something that reads as a flag), no '..' anywhere.
# No "__" either: it joins the names of a cell in its keys and folder names (``demo__digits__alore``).
NAME_PATTERN = re.compile(r"(?!.*\.\.)(?!.*__)[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
KINDS = ("sweep", "backbone", "task", "method")
RULE = "use letters, digits, '_', '-', '.' (no path separators, no '..' or '__')"


def check_name(kind: str, value: object) -> str:
    """``value`` if it is a safe ``kind`` name, else :class:`ConfigError` with one line."""
    # fullmatch, not '^...$': '$' also matches before a trailing newline.
    ok = isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None
    if ok and kind == "backbone" and value.count(".") > 1:  # type: ignore[union-attr]
        raise ConfigError(f"bad backbone name {value!r}: a timm name with at most one '.tag', {RULE}")
    if not ok:
        shown = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        raise ConfigError(f"bad {kind} name {shown}: {RULE}, at most 100 characters")
    return value  # type: ignore[return-value]


def inside(folder: Path, *parts: str) -> Path:
    """``folder / parts...`` resolved, refused unless it lies strictly inside ``folder``.

    Resolving follows existing symlinks, so a link planted in the work folder
    that points elsewhere is caught as well as a ``..`` part or an absolute part.
    """
    base = Path(folder).resolve()
    path = base.joinpath(*parts).resolve()
    if parts and (path == base or not path.is_relative_to(base)):
        raise ConfigError(f"path {'/'.join(parts)!r} escapes {base}: refusing to write outside it")
    return path


class UntrustedFolderError(AloreError):
    """A folder Tune would unpickle from could have been written by someone else."""


def make_private(folder: Path) -> None:
    """Create ``folder`` (and missing parents) owner-only; an existing folder is checked, not changed."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):  # mkdir(parents=True) would give the parents the default mode
        p.mkdir(mode=0o700, exist_ok=True)
    check_trusted(folder)


def check_trusted(path: Path) -> None:
    """Refuse a path another user owns or could have written (group/world-writable), the folder itself
    and every file in it that Tune unpickles."""
    targets = [path] + ([p for p in path.iterdir() if p.suffix in (".pkl", ".json")] if path.is_dir() else [])
    for p in targets:
        st = p.lstat()
        if st.st_uid != os.getuid():
            raise UntrustedFolderError(f"refusing to use {p}: owned by uid {st.st_uid}, not by you (uid "
                                       f"{os.getuid()}); Ray Tune unpickles files from it. Use a work folder you own")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedFolderError(f"refusing to use {p}: writable by group or others (mode "
                                       f"{stat.S_IMODE(st.st_mode):o}); Ray Tune unpickles files from it. "
                                       f"Fix it with: chmod go-w {p}")
