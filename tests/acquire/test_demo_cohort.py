"""The demo cohort's plan: deterministic, planted mechanisms, a no-signal cancer balanced at chance."""

from __future__ import annotations

import numpy as np
import yaml
from support.workflow_helpers import REPO

from wsikt.acquire.demo_cohort import plan_cohort
from wsikt.survival.metrics import harrell_c


def _plan(cancers=None):
    c = yaml.safe_load((REPO / "config/config.yaml").read_text())["demo"]
    return _plan_with(cancers=cancers or c["cancers"], appearance=c["appearance"])


def _plan_with(cancers=None, appearance=0.6):
    c = yaml.safe_load((REPO / "config/config.yaml").read_text())["demo"]
    return plan_cohort(seed=c["seed"], cancers=cancers or c["cancers"], two_slide_fraction=c["two_slide_fraction"],
                       fraction_40x=c["fraction_40x"], appearance=appearance)


def _factors(plan, cancer):
    """Per-patient image factors of ``cancer`` (density and the appearance knobs), patient order."""
    p = plan.patients[plan.patients["cancer"] == cancer]
    look = plan.slides.drop_duplicates("patient_id").set_index("patient_id").loc[p["patient_id"]]
    cols = {"density": p["density"].to_numpy(), "nucleus_um": look["nucleus_um"].to_numpy()}
    cols |= {k: look[k].to_numpy() for k in ("stain", "nucleus_tone", "texture", "blur_um")}
    cols |= {f"wb{i}": np.stack(look["white_balance"].map(np.asarray).to_numpy())[:, i] for i in range(3)}
    return p, cols


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
        else:  # every image factor ranks the no-signal cancer's survival at chance in the sample itself
            p, factors = _factors(a, cancer)
            for name, values in factors.items():
                assert np.ptp(values) > 0, name  # the factor does vary between patients
                fc = harrell_c(p["time"].to_numpy(float), p["event"].to_numpy(), values)
                assert abs(fc - 0.5) < 0.01, (cancer, name, fc)


def test_balancing_the_noise_cancer_only_permutes_its_outcomes(monkeypatch):
    balanced = _plan()
    import wsikt.acquire.demo_cohort as cohort

    monkeypatch.setattr(cohort, "_decorrelate", lambda *a, **k: None)
    unbalanced = _plan()
    noise = balanced.patients["mechanism"] == "none"
    assert noise.sum() >= 20
    assert balanced.patients.loc[~noise].equals(unbalanced.patients.loc[~noise])
    assert balanced.slides.equals(unbalanced.slides)  # images untouched
    nb, nu = balanced.patients.loc[noise], unbalanced.patients.loc[noise]
    assert np.array_equal(nb["density"], nu["density"])
    assert sorted(zip(nb["time"], nb["event"])) == sorted(zip(nu["time"], nu["event"]))  # outcomes permuted
    assert not np.array_equal(nb["time"], nu["time"])
    before = max(abs(harrell_c(nu["time"].to_numpy(float), nu["event"].to_numpy(), v) - 0.5) for v in _factors(unbalanced, "NOIS")[1].values())
    assert before > 0.03  # drawn independently, some factor ranked the sample off chance


def test_appearance_varies_between_patients_not_within_and_never_moves_the_truth():
    plain, varied = _plan_with(appearance=0.0), _plan_with(appearance=1.0)
    shared = plain.patients["mechanism"] != "none"
    assert plain.patients.loc[shared].equals(varied.patients.loc[shared])  # own random stream
    assert plain.slides["stain"].nunique() == 1 and plain.slides["blur_um"].max() == 0
    per_patient = varied.slides.groupby("patient_id")[["stain", "nucleus_tone", "texture", "blur_um", "nucleus_um"]].nunique()
    assert (per_patient == 1).all().all()  # a patient's slides share one look
    assert varied.slides.drop_duplicates("patient_id")["stain"].std() > 0.2


def test_rendered_appearance_knobs_change_the_image_as_named():
    import cv2

    from wsikt.acquire.demo_render import render_slide

    def draw(**kw):
        return render_slide(np.random.default_rng(3), 0.5, 400.0, 15.0, (225, 175, 206), 3.0, 1,
                            white_balance=(0.0, 0.0, 0.0), **kw).astype(float)

    base, heavy, light = draw(), draw(stain=1.5), draw(stain=0.6)
    tissue = base.mean(2) < 235
    od = [(-np.log(np.clip(im[tissue] / 255, 1e-3, 1))).mean() for im in (light, base, heavy)]
    assert od[0] < od[1] < od[2]  # stain scales optical density
    sharp = np.abs(cv2.Laplacian(base.mean(2), cv2.CV_64F)).mean()
    blurred = np.abs(cv2.Laplacian(draw(blur_um=1.0).mean(2), cv2.CV_64F)).mean()
    assert blurred < 0.5 * sharp  # focus
