"""Cancer groups: several TCGA projects pooled into one cancer (CROPKT's COADREAD, GBMLGG, KIPAN, LUNG, STES).

A group replaces its members' cancer name in the sample sheet before anything else reads it, so
labels, splits, experts, transfer and the report all see one cancer. The clinical table keeps the
projects' own ``type`` values; ``clinical_types`` says which a pooled cancer accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import pandas as pd

from wsikt.config.validate import ConfigError

CROPKT_GROUPS = {
    "COADREAD": ("COAD", "READ"), "GBMLGG": ("GBM", "LGG"), "KIPAN": ("KICH", "KIRC", "KIRP"),
    "LUNG": ("LUAD", "LUSC"), "STES": ("STAD", "ESCA"),
}  # the pooled cancers of CROPKT's UNI2-h-DSS (its paper's 13 cancers include these 5)


def project_cancer(name: str) -> str:
    """A TCGA project id or cancer name as a cancer name: 'TCGA-COAD' → 'COAD' (the GDC query's naming)."""
    return str(name).strip().removeprefix("TCGA-")


@dataclass(frozen=True)
class CancerGroups:
    """Group name → member cancers (config key ``cancer_groups``); empty = every cancer stands alone."""

    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, section: Mapping[str, Iterable[str]] | None) -> "CancerGroups":
        """From config key ``cancer_groups``; a cancer in two groups, or a group named like another
        group's member, raises ValueError naming both and the fix."""
        groups: dict[str, tuple[str, ...]] = {}
        owner: dict[str, str] = {}
        for name, members in (section or {}).items():
            cancers = tuple(dict.fromkeys(project_cancer(m) for m in members))
            if not cancers:
                raise ValueError(f"cancer_groups.{name} lists no cancer; list its TCGA projects or remove it")
            for cancer in cancers:
                if cancer in owner:
                    raise ValueError(f"cancer_groups: {cancer} is in both {owner[cancer]} and {name}; "
                                     "a project can be pooled into one group only")
                owner[cancer] = name
            groups[str(name)] = cancers
        for name in groups:
            if name in owner and owner[name] != name:
                raise ValueError(f"cancer_groups: group {name} is also a member of group {owner[name]}; "
                                 "rename the group or drop it from the other's list")
        return cls(groups)

    @property
    def group_of(self) -> dict[str, str]:
        """Member cancer → its group."""
        return {m: g for g, members in self.groups.items() for m in members}

    def apply(self, samples: pd.DataFrame, source: str = "sample sheet") -> pd.DataFrame:
        """The sample sheet with each member's ``cancer`` replaced by its group (the original kept in ``project``).

        A sheet cancer named like a group without being one of its members would be pooled silently,
        so it raises ConfigError naming it and the fix.
        """
        if not self.groups or samples.empty:
            return samples
        group_of = self.group_of
        clash = sorted(set(samples["cancer"].astype(str)) & (set(self.groups) - set(group_of)))
        if clash:
            name = clash[0]
            raise ConfigError(
                f"{source}: cancer {name} of the sample sheet is also the name of cancer_groups.{name} "
                f"(pooling {', '.join(self.groups[name])}); rename the group, or add {name} to its list to pool them")
        out = samples.copy()
        out["project"] = out["cancer"].astype(str)
        out["cancer"] = out["project"].map(lambda c: group_of.get(c, c))
        return out

    def clinical_types(self, cancer: str) -> list[str]:
        """The clinical table's ``type`` values a (possibly pooled) cancer's patients may have."""
        return sorted({cancer, *self.groups.get(cancer, ())})

    def types_by_cancer(self, cancers: Iterable[str]) -> dict[str, list[str]]:
        """``clinical_types`` of each cancer (for ``build_labels``)."""
        return {c: self.clinical_types(c) for c in cancers}
