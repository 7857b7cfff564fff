"""The demo cohort's plan: deterministic, planted mechanisms, a no-signal cancer balanced at chance."""

from __future__ import annotations

import numpy as np
import yaml

from wsikt.demo.cohort import plan_cohort
from wsikt.metrics import harrell_c
from workflow_helpers import REPO


def _plan(cancers=None):
    c = yaml.safe_load((REPO / "config/config.yaml").read_text())["demo"]
    return plan_cohort(seed=c["seed"], cancers=cancers or c["cancers"], two_slide_fraction=c["two_slide_fraction"],
                       fraction_40x=c["fraction_40x"])


def test_plan_is_deterministic_and_mechanisms_show_in_the_sample():
    a, b = _plan(), _plan()
    assert a.patients.equals(b.patients) and a.slides.equals(b.slides)
    for cancer, g in a.patients.groupby("cancer"):
        c = harrell_c(g["time"].to_numpy(float), g["event"].to_numpy(), g["density"].to_numpy())
        mechanism = g["mechanism"].iloc[0]
        if mechanism == "shared":
            assert c > 0.75, (cancer, c)
        elif mechanism == "reversed":
            assert c < 0.25, (cancer, c)
        else:  # density ranks the no-signal cancer's survival at chance in the sample itself
            assert abs(c - 0.5) < 0.01, (cancer, c)


def test_balancing_the_noise_cancer_only_permutes_its_densities():
    cancers = yaml.safe_load((REPO / "config/config.yaml").read_text())["demo"]["cancers"]
    balanced = _plan(cancers)
    unbalanced = _plan([dict(c, mechanism="shared") if c["mechanism"] == "none" else c for c in cancers])
    noise = [c["name"] for c in cancers if c["mechanism"] == "none"]
    other = ~balanced.patients["cancer"].isin(noise)
    cols = ["patient_id", "density", "time", "event"]
    assert balanced.patients.loc[other, cols].equals(unbalanced.patients.loc[other, cols])
    nb = balanced.patients.loc[~other]
    assert sorted(nb["density"]) == sorted(unbalanced.patients.loc[~other, "density"])  # a permutation
    slides = balanced.slides.merge(nb[["patient_id", "density"]], on="patient_id", suffixes=("", "_patient"))
    assert np.allclose(slides["density"], slides["density_patient"], atol=0.15)  # slides follow their patient
