"""The offload report: one record per attention site found in a model, offloaded to Energon or kept on
the host, with the reason and the workload; an offloaded site also carries its program bytes and its
schedule with where the schedule came from, so a packager needs nothing else. ``tvmc compile
--dump-offloads`` prints :meth:`OffloadReport.format`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..executor import ScheduleChoice
from ..schedules.workload import AttentionWorkload

OFFLOADED = "offloaded to Energon"


@dataclass(frozen=True)
class OffloadRecord:
    """One attention site. ``site`` is the Relax variable the attention output is bound to in
    ``function``; ``workload`` is set whenever the site could be read (even if it stays on the host,
    e.g. for a head dim the machine does not take); ``program`` (container bytes) and ``schedule``
    (the schedule and its source) are set for an offloaded site."""

    site: str
    function: str
    offloaded: bool
    reason: str
    workload: AttentionWorkload | None = None
    pattern: str | None = None
    form: str | None = None
    program: bytes | None = field(default=None, repr=False)
    schedule: ScheduleChoice | None = None

    def to_dict(self) -> dict:
        """The JSON form a package manifest keeps (the program bytes are a member file of their own)."""
        return {
            "site": self.site, "function": self.function, "offloaded": self.offloaded,
            "reason": self.reason, "pattern": self.pattern, "form": self.form,
            "workload": None if self.workload is None else self.workload.to_dict(),
        }


@dataclass(frozen=True)
class OffloadReport:
    """Every attention site of a partitioned module, in program order."""

    records: tuple[OffloadRecord, ...]
    config: str

    def __iter__(self) -> Iterator[OffloadRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index) -> OffloadRecord:
        return self.records[index]

    @property
    def offloaded(self) -> tuple[OffloadRecord, ...]:
        return tuple(r for r in self.records if r.offloaded)

    @property
    def rejected(self) -> tuple[OffloadRecord, ...]:
        return tuple(r for r in self.records if not r.offloaded)

    def site(self, name: str) -> OffloadRecord:
        for record in self.records:
            if record.site == name:
                return record
        raise KeyError(f"no attention site {name!r}; sites are {', '.join(r.site for r in self.records)}")

    def to_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.records]

    def format(self) -> str:
        """A table a person can read: one line per site, then the reason for each host site."""
        lines = [f"Energon offload report (config {self.config}): {len(self.offloaded)} of "
                 f"{len(self.records)} attention site(s) offloaded"]
        if not self.records:
            return lines[0]
        width = max(len(f"{r.function}:{r.site}") for r in self.records)
        masks = [r.workload.mask_kind if r.workload else "-" for r in self.records]
        mask_width = max(len("mask"), *map(len, masks))
        lines.append(f"  {'site':<{width}}  {'where':<7}  {'B x H x Sq x Sk x D':<22}  {'mask':<{mask_width}}  "
                     f"form / reason")
        for r, mask in zip(self.records, masks):
            w = r.workload
            dims = f"{w.batch}x{w.heads}x{w.seq_q}x{w.seq_k}x{w.head_dim}" if w else "-"
            where = "energon" if r.offloaded else "host"
            detail = r.form if r.offloaded else r.reason
            lines.append(f"  {f'{r.function}:{r.site}':<{width}}  {where:<7}  {dims:<22}  {mask:<{mask_width}}  "
                         f"{detail}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()
