"""cancer_groups: TCGA projects pooled into one cancer (CROPKT's COADREAD, GBMLGG, KIPAN, LUNG, STES)."""

from __future__ import annotations

import pandas as pd
import pytest

from wsikt.cohort.groups import CROPKT_GROUPS, CancerGroups
from wsikt.cohort.labels import build_labels
from wsikt.cohort.screen import screen_cancers
from wsikt.config.validate import ConfigError


def _sheet() -> pd.DataFrame:
    rows = [("s1", "TCGA-AA-0001", "COAD"), ("s2", "TCGA-AG-0002", "READ"), ("s3", "TCGA-05-0003", "LUAD"),
            ("s4", "TCGA-18-0004", "LUSC"), ("s5", "TCGA-A1-0005", "BRCA")]
    return pd.DataFrame(rows, columns=["slide_id", "patient_id", "cancer"]).assign(path=lambda d: d["slide_id"] + ".svs")


def test_groups_pool_projects_into_one_cancer():
    groups = CancerGroups.from_config({"COADREAD": ["TCGA-COAD", "TCGA-READ"], "LUNG": ["LUAD", "TCGA-LUSC"]})
    pooled = groups.apply(_sheet())
    assert list(pooled["cancer"]) == ["COADREAD", "COADREAD", "LUNG", "LUNG", "BRCA"]
    assert list(pooled["project"]) == ["COAD", "READ", "LUAD", "LUSC", "BRCA"]
    assert groups.clinical_types("COADREAD") == ["COAD", "COADREAD", "READ"] and groups.clinical_types("BRCA") == ["BRCA"]
    assert CancerGroups.from_config({}).apply(_sheet()).equals(_sheet())  # default: no pooling
    cropkt = CancerGroups.from_config({g: [f"TCGA-{m}" for m in ms] for g, ms in CROPKT_GROUPS.items()})
    assert cropkt.group_of["KIRP"] == "KIPAN" and cropkt.group_of["ESCA"] == "STES"


def test_pooled_labels_accept_each_projects_clinical_type():
    clinical = pd.DataFrame({"bcr_patient_barcode": ["TCGA-AA-0001", "TCGA-AG-0002", "TCGA-05-0003"],
                             "type": ["COAD", "READ", "COAD"], "DSS": [1, 0, 1], "DSS.time": [100, 200, 300]})
    groups = CancerGroups.from_config({"COADREAD": ["TCGA-COAD", "TCGA-READ"], "LUNG": ["LUAD", "LUSC"]})
    pooled = groups.apply(_sheet())
    types = groups.types_by_cancer(pooled["cancer"].unique())
    labels, excluded = build_labels(clinical, pooled, "DSS", types=types)
    assert sorted(labels.loc[labels["cancer"] == "COADREAD", "patient_id"]) == ["TCGA-AA-0001", "TCGA-AG-0002"]
    lung = excluded.set_index("patient_id").loc["TCGA-05-0003"]
    assert lung["cancer"] == "LUNG" and lung["reason"] == "clinical type COAD differs from sample sheet"
    # without the group's types a pooled cancer would lose every patient: the workflow passes them
    assert build_labels(clinical, pooled, "DSS")[0].empty
    with pytest.raises(ConfigError, match="cancer LUNG: 0 of its 2 patients"):
        screen_cancers(pooled[pooled["cancer"] != "BRCA"], clinical, "DSS", 1, types=types)


@pytest.mark.parametrize("section, line", [
    ({"A": ["TCGA-COAD", "READ"], "B": ["COAD"]}, "cancer_groups: COAD is in both A and B; a project can be pooled into one group only"),
    ({"KIPAN": ["KICH", "KIRC"], "KIRC": ["KIRP"]}, "cancer_groups: group KIRC is also a member of group KIPAN"),
])
def test_groups_that_cannot_be_meant_fail_with_one_line(section, line):
    with pytest.raises(ValueError, match=line) as err:
        CancerGroups.from_config(section)
    assert "\n" not in str(err.value)


def test_a_group_named_like_an_ungrouped_sheet_cancer_fails():
    sheet = pd.concat([_sheet(), pd.DataFrame([("s6", "X-1", "LUNG", "s6.svs")], columns=_sheet().columns)])
    with pytest.raises(ConfigError, match=r"own.tsv: cancer LUNG of the sample sheet is also the name of cancer_groups.LUNG "
                                          r"\(pooling LUAD, LUSC\); rename the group, or add LUNG to its list"):
        CancerGroups.from_config({"LUNG": ["LUAD", "LUSC"]}).apply(sheet, "own.tsv")
    pooled = CancerGroups.from_config({"LUNG": ["LUAD", "LUSC", "LUNG"]}).apply(sheet)  # listed: pooled on purpose
    assert (pooled["cancer"] == "LUNG").sum() == 3
