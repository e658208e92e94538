"""The landing zone: where operators drop CDR files, and where bad files are quarantined.

Local folders today; the interface (list, fingerprint, open, quarantine) is what an object-store
implementation would provide too, so the sensor and the raw asset never touch paths directly.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

from dagster import ConfigurableResource

from voicefw_assets.settings import paths


@dataclass(frozen=True, order=True)
class LandedFile:
    """A file in landing/<operator>/, identified by path + size + mtime (the sensor's run key)."""

    operator: str
    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int = 0

    @property
    def fingerprint(self) -> str:
        return f"{self.path}:{self.size}:{self.mtime_ns}"

    @property
    def arrived_ns(self) -> int:
        """When the file reached landing: `mv` and `rsync -t` keep an old mtime, but a rename into
        the folder sets ctime, so a moved-in old file is still newer than the sensor's cursor."""
        return max(self.mtime_ns, self.ctime_ns)


class LandingZone(ConfigurableResource):
    """`root` empty means $VOICEFW_HOME/landing; quarantine defaults to $VOICEFW_HOME/quarantine."""

    root: str = ""
    quarantine_root: str = ""

    @property
    def landing_dir(self) -> Path:
        return Path(self.root) if self.root else paths().landing

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.quarantine_root) if self.quarantine_root else paths().quarantine

    def operators_present(self) -> list[str]:
        """Folder names under landing/ (including ones no config knows: those get quarantined)."""
        if not self.landing_dir.exists():
            return []
        return sorted(p.name for p in self.landing_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_files(self, operator: str, patterns: tuple[str, ...] = ("*",)) -> list[LandedFile]:
        """Files of one operator matching the config's patterns, sorted by name. Hidden and partial
        uploads (`.name`, `*.part`, `*.tmp`) are not files yet."""
        folder = self.landing_dir / operator
        if not folder.is_dir():
            return []
        out = []
        for p in folder.iterdir():
            name = p.name
            if name.startswith(".") or name.endswith((".part", ".tmp")) or not p.is_file():
                continue
            if not any(fnmatch(name, pat) for pat in patterns):
                continue
            st = p.stat()
            out.append(LandedFile(operator, p, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return sorted(out)

    def unmatched_files(self, operator: str, patterns: tuple[str, ...]) -> list[LandedFile]:
        """Files in the operator's folder that its config does not claim (so they are never silently ignored)."""
        claimed = {f.path for f in self.list_files(operator, patterns)}
        return [f for f in self.list_files(operator) if f.path not in claimed]

    def quarantine(self, path: Path, reason: str, operator: str | None = None) -> Path:
        """Move a file out of landing with a `<name>.reason.json` beside it. Returns the new path."""
        operator = operator or path.parent.name
        target_dir = self.quarantine_dir / operator
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        if target.exists():  # never overwrite an earlier quarantined file of the same name
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            target = target_dir / f"{path.stem}.{stamp}{path.suffix}"
        shutil.move(str(path), target)
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
