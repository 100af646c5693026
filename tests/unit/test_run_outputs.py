"""RunOutputs, the run's artifacts in one model: a task that takes it is keyed on the
artifacts' fingerprints, as when they were passed one by one."""

from trainflow.artifacts import ArtifactRef
from trainflow.caching import canonical
from trainflow.run_outputs import RunOutputs


def ref(kind: str, fingerprint: str, store: str = "/store") -> ArtifactRef:
    return ArtifactRef(uri=f"{store}/{kind}/{fingerprint}", fingerprint=fingerprint, kind=kind)


def outputs(store: str = "/store", fold: str = "f1") -> RunOutputs:
    return RunOutputs(
        data={"splits": ref("splits", "s", store), "steps": [ref("table", "t", store)]},
        model=ref("model", "m", store),
        test=ref("metrics", "e", store),
        folds=[ref("model", fold, store)],
        compressed={"prune": ref("model", "p", store)},
    )


def test_a_report_of_the_same_artifacts_in_another_store_has_the_same_key():
    assert canonical(outputs("/a/store")) == canonical(outputs("/b/store"))
    assert canonical(outputs()) != canonical(outputs(fold="f2"))


def test_its_key_is_the_artifacts_keys_one_by_one():
    one = outputs()
    assert canonical(one) == canonical(dict(one))
