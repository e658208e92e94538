"""The landing zone: where operators drop CDR files, and where bad files are quarantined.

Local folders today; the interface (list, fingerprint, open, quarantine) is what an object-store
implementation would provide too, so the sensor and the raw asset never touch paths directly.

Listing never follows symlinks and never opens anything: every entry of an operator folder is
listed with what it is (a regular file, a symlink, a FIFO...) and whether it is stable (not
modified for `settle_s` seconds, $VOICEFW_SETTLE_S, default 30), so the sensor and
`voicefw materialize` see the same files and the same decision inputs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

from dagster import ConfigurableResource

from voicefw_assets.settings import paths

DEFAULT_SETTLE_S = 30.0


def settle_seconds() -> float:
    """How long a file must stay unmodified before it is read ($VOICEFW_SETTLE_S, default 30 s)."""
    return float(os.environ.get("VOICEFW_SETTLE_S", DEFAULT_SETTLE_S))


@dataclass(frozen=True, order=True)
class LandedFile:
    """A file in landing/<operator>/, identified by path + size + mtime (the sensor's run key)."""

    operator: str
    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int = 0
    kind: str = "file"  # file | symlink | fifo | socket | device | other (only "file" is ever read)
    # unmodified for the settle time when listed, by ctime: every write moves it, on this host's clock
    # (an mtime can come from another host's clock, or be set back by `cp -p` / `rsync -t`)
    stable: bool = True

    @property
    def fingerprint(self) -> str:
        return f"{self.path}:{self.size}:{self.mtime_ns}"

    @property
    def arrived_ns(self) -> int:
        """When the file reached landing: `mv` and `rsync -t` keep an old mtime, but a rename into
        the folder sets ctime, so a moved-in old file is still newer than the sensor's cursor."""
        return max(self.mtime_ns, self.ctime_ns)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _move(path: Path, target: Path) -> None:
    """Rename; across file systems copy a regular file, re-create a symlink (never its target),
    and refuse anything else (opening a FIFO to copy it would block). FileNotFoundError if gone."""
    try:
        os.rename(path, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(path), target)
        os.unlink(path)
    elif stat.S_ISREG(st.st_mode):
        shutil.move(str(path), target)
    else:
        raise OSError(errno.EXDEV, f"cannot move a {_kind(st.st_mode)} across file systems", str(path))


class LandingZone(ConfigurableResource):
    """`root` empty means $VOICEFW_HOME/landing; quarantine defaults to $VOICEFW_HOME/quarantine;
    `settle_s` negative means $VOICEFW_SETTLE_S (default 30 s)."""

    root: str = ""
    quarantine_root: str = ""
    settle_s: float = -1.0

    @property
    def landing_dir(self) -> Path:
        return Path(self.root) if self.root else paths().landing

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.quarantine_root) if self.quarantine_root else paths().quarantine

    @property
    def settle_seconds(self) -> float:
        return self.settle_s if self.settle_s >= 0 else settle_seconds()

    def operators_present(self) -> list[str]:
        """Real (not symlinked) folders under landing/, including ones no config knows: those
        get quarantined. A symlinked folder is never listed: its files may live anywhere."""
        if not self.landing_dir.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.landing_dir)
                      if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))

    def stray_entries(self) -> list[Path]:
        """What sits in landing/ but is not an operator folder (files at the top, symlinked folders)."""
        if not self.landing_dir.is_dir():
            return []
        return sorted(Path(e.path) for e in os.scandir(self.landing_dir)
                      if not e.name.startswith(".") and not e.is_dir(follow_symlinks=False))

    def list_files(self, operator: str, patterns: tuple[str, ...] = ("*",), now_ns: int | None = None) -> list[LandedFile]:
        """Entries of one operator folder matching the patterns, sorted by name, symlinks and special
        files included (they are quarantined, never read). Hidden and partial uploads (`.name`,
        `*.part`, `*.tmp`) are not files yet; subfolders are not listed."""
        folder = self.landing_dir / operator
        try:
            entries = list(os.scandir(folder)) if not folder.is_symlink() else []
        except (FileNotFoundError, NotADirectoryError):
            return []
        now_ns = now_ns if now_ns is not None else time.time_ns()
        settle_ns = int(self.settle_seconds * 1e9)
        out = []
        for e in entries:
            name = e.name
            if name.startswith(".") or name.endswith((".part", ".tmp")):
                continue
            if not any(fnmatch(name, pat) for pat in patterns):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:  # gone since the listing
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            out.append(LandedFile(operator, Path(e.path), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                  _kind(st.st_mode), now_ns - st.st_ctime_ns >= settle_ns))
        return sorted(out)

    def unmatched_files(self, operator: str, patterns: tuple[str, ...]) -> list[LandedFile]:
        """Files in the operator's folder that its config does not claim (so they are never silently ignored)."""
        claimed = {f.path for f in self.list_files(operator, patterns)}
        return [f for f in self.list_files(operator) if f.path not in claimed]

    def quarantine(self, path: Path, reason: str, operator: str | None = None) -> Path:
        """Move a file (a symlink itself, never its target) out of landing with a
        `<name>.reason.json` beside it. Returns the new path; FileNotFoundError if it is gone."""
        operator = operator or path.parent.name
        target_dir = self.quarantine_dir / operator
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        if target.exists() or target.is_symlink():  # never overwrite an earlier quarantined file of the same name
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            target = target_dir / f"{path.stem}.{stamp}{path.suffix}"
        _move(path, target)
        reason_file = target.with_name(target.name + ".reason.json")
        reason_file.write_text(
            json.dumps(
                {
                    "file": path.name,
                    "operator": operator,
                    "from": str(path),
                    "reason": reason,
                    "quarantined_at": datetime.now(timezone.utc).isoformat(),
                },
                indent=2,
            )
        )
        return target

    def quarantined(self) -> list[dict]:
        """Every quarantined file with its reason, for reports and the UI."""
        if not self.quarantine_dir.exists():
            return []
        return [json.loads(p.read_text()) | {"path": str(p)[: -len(".reason.json")]} for p in sorted(self.quarantine_dir.glob("*/*.reason.json"))]
