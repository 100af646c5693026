"""An s3:// store against a local moto server: publication (files first, manifest last), what a
reader accepts, refetching a lost local copy, and the errors of a URL that cannot work."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.moto_s3 import CREDENTIALS, moto_server, s3
from trainflow.artifacts import ArtifactRef, Store
from trainflow.errors import ArtifactError, SpecError, TrainflowError
from trainflow.remote import PUBLISHED, bucket_of, open_outputs
from trainflow.spec.pipeline import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("s3fs")
# A moto server (or a subprocess): not in the fast run (`-m "not slow"`), as for any server.
SERVER = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, request):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    name = f"b-{request.node.name.replace('_', '-')[:40].lower()}"
    s3(endpoint).mkdir(name)
    return name


def remote_store(endpoint: str, bucket: str, mirror: Path) -> Store:
    return Store(open_outputs(f"s3://{bucket}/runs", {"endpoint_url": endpoint}, str(mirror)))


def table(store: Store, text: str = "a,b\n1,2\n") -> ArtifactRef:
    with store.writer("table") as staging:
        (staging / "data.csv").write_text(text)
        (staging / "part").mkdir()
        (staging / "part" / "more.csv").write_text(text * 3)
        return store.commit(staging, "table", count=1)


@SERVER
def test_a_commit_is_published_files_first_and_manifest_last(endpoint, bucket, tmp_path):
    ref = table(remote_store(endpoint, bucket, tmp_path / "mirror"))
    prefix = f"{bucket}/runs/table/{ref.fingerprint}"
    listing = s3(endpoint).find(prefix, detail=True)
    assert sorted(k[len(prefix) + 1 :] for k in listing) == [
        PUBLISHED,
        "data.csv",
        "part/more.csv",
        "ref.json",
    ]
    manifest = json.loads(s3(endpoint).cat_file(f"{prefix}/{PUBLISHED}"))
    assert manifest["fingerprint"] == ref.fingerprint
    assert manifest["files"]["part/more.csv"] == len("a,b\n1,2\n" * 3)
    written = {k: v["LastModified"] for k, v in listing.items()}
    assert written[f"{prefix}/{PUBLISHED}"] == max(written.values())
    assert s3(endpoint).exists(f"{bucket}/runs/.trainflow-store")
    assert ref.is_valid()


@SERVER
def test_a_lost_local_copy_is_fetched_and_a_lost_object_is_not_valid(endpoint, bucket, tmp_path):
    ref = table(remote_store(endpoint, bucket, tmp_path / "mirror"))
    shutil.rmtree(ref.path)  # the mirror lost it: fetched from the bucket
    ref.verify()
    assert (ref.path / "part" / "more.csv").read_text() == "a,b\n1,2\n" * 3

    s3(endpoint).rm_file(f"{bucket}/runs/table/{ref.fingerprint}/part/more.csv")
    with pytest.raises(ArtifactError, match="lost 1 of its files"):
        ref.verify()  # the bucket is the truth, though the mirror still holds it whole
    table(remote_store(endpoint, bucket, tmp_path / "mirror"))  # the next commit republishes
    assert ref.is_valid()


@SERVER
def test_another_mirror_reads_what_one_published(endpoint, bucket, tmp_path):
    ref = table(remote_store(endpoint, bucket, tmp_path / "one"))
    other = remote_store(endpoint, bucket, tmp_path / "two")
    there = ArtifactRef(**{**ref.model_dump(), "uri": str(other.root / "table" / ref.fingerprint)})
    there.verify()  # fetched into the second mirror, fingerprint checked
    assert (there.path / "data.csv").read_text() == "a,b\n1,2\n"


@SERVER
def test_a_publication_cut_before_its_manifest_leaves_nothing_a_reader_accepts(
    endpoint, bucket, tmp_path, monkeypatch
):
    store = remote_store(endpoint, bucket, tmp_path / "mirror")
    assert store.bucket is not None
    fs = store.bucket.fs
    real = fs.pipe_file

    def cut(path, *args, **kwargs):  # the connection drops as the manifest is sent
        if path.endswith(PUBLISHED):
            raise ConnectionError("connection reset by peer")
        return real(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fs, "pipe_file", cut)
        with pytest.raises(ArtifactError, match="nothing a reader accepts was left"):
            table(store)
    uploaded = s3(endpoint).find(f"{bucket}/runs/table")
    assert uploaded and not any(k.endswith(PUBLISHED) for k in uploaded)  # files, no manifest
    fingerprint = uploaded[0].split("/")[3]
    reader = remote_store(endpoint, bucket, tmp_path / "reader")
    half = ArtifactRef(
        uri=str(reader.root / "table" / fingerprint), fingerprint=fingerprint, kind="table", count=1
    )
    with pytest.raises(ArtifactError, match="is not in the bucket"):
        half.verify()
    assert not half.path.exists()  # nothing was fetched
    ref = table(store)  # the rerun publishes it whole
    assert ref.fingerprint == fingerprint and half.is_valid()


def test_a_url_without_bucket_is_refused_when_the_spec_loads():
    with pytest.raises(SpecError, match=r"names no bucket: write s3://BUCKET/PREFIX"):
        load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml", ["outputs.store=s3:///prefix"])
    with pytest.raises(SpecError, match="is for an s3:// or gs:// store"):
        load_spec(ROOT / "pipelines" / "breast_cancer_mlp.yaml", ["outputs.mirror=/tmp/m"])


@SERVER
def test_a_missing_bucket_is_one_error_naming_it(endpoint, bucket, tmp_path):
    with pytest.raises(TrainflowError, match=r"s3://no-such-bucket/p: no such bucket"):
        open_outputs("s3://no-such-bucket/p", {"endpoint_url": endpoint}, str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


@SERVER
def test_an_endpoint_that_does_not_answer_is_named(bucket, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TrainflowError, match=r"s3://b/p: the endpoint does not answer") as err:
        open_outputs("s3://b/p", {"endpoint_url": f"http://127.0.0.1:{port}"}, str(tmp_path))
    assert "endpoint_url" in str(err.value)


@SERVER
def test_no_credentials_is_one_error_naming_where_they_go(endpoint, tmp_path, monkeypatch):
    for name in (*CREDENTIALS, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(TrainflowError, match=r"s3://creds/p: no credentials .*AWS_ACCESS_KEY_ID"):
        open_outputs("s3://creds/p", {"endpoint_url": endpoint}, str(tmp_path / "m"))


@SERVER
def test_without_s3fs_the_error_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['s3fs'] = None\n"  # as if it were not installed
        "from trainflow.remote import open_outputs\n"
        "from trainflow.errors import TrainflowError\n"
        "try: open_outputs('s3://b/p')\n"
        "except TrainflowError as exc: print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "s3://b/p needs s3fs, which is not installed: pip install 'trainflow[s3]'" in out.stdout


def test_a_folder_store_has_no_bucket(tmp_path):
    assert bucket_of(Store(tmp_path / "store").root) is None


def test_the_champion_of_an_s3_pipeline_lives_in_its_mirror(tmp_path, monkeypatch):
    from trainflow.champion import store_for

    (tmp_path / "churn.yaml").write_text(
        f"outputs: {{store: 's3://b/p', mirror: '{tmp_path / 'mirror'}'}}\n"
    )
    monkeypatch.setenv("TRAINFLOW_PIPELINES_DIR", str(tmp_path))
    assert store_for("churn") == tmp_path / "mirror"  # looked up without reaching the bucket


@SERVER
def test_preflight_names_a_missing_bucket_before_any_work(endpoint, bucket, tmp_path):
    from trainflow.preflight import check_data

    spec = load_spec(
        ROOT / "pipelines" / "breast_cancer_mlp.yaml",
        [
            "outputs.store=s3://not-created/store",
            f'outputs.store_options={{endpoint_url: "{endpoint}"}}',
            f"outputs.mirror={tmp_path / 'mirror'}",
        ],
    )
    with pytest.raises(TrainflowError, match=r"s3://not-created/store: no such bucket"):
        check_data(spec)
    assert not (tmp_path / "mirror").exists()


@SERVER
def test_a_damaged_mirror_copy_is_replaced_by_the_buckets(endpoint, bucket, tmp_path):
    ref = table(remote_store(endpoint, bucket, tmp_path / "mirror"))
    (ref.path / "data.csv").write_text("a,b\n9,9\n")
    ref.verify()  # the bucket holds it whole: its copy replaces the damaged one
    assert (ref.path / "data.csv").read_text() == "a,b\n1,2\n"
    s3(endpoint).pipe_file(f"{bucket}/runs/table/{ref.fingerprint}/data.csv", b"a,b\n9,9\n")
    (ref.path / "data.csv").write_text("a,b\n9,9\n")  # both damaged (same size): not valid
    with pytest.raises(ArtifactError, match="was altered"):
        ref.verify()
    table(remote_store(endpoint, bucket, tmp_path / "mirror"))  # the recompute republishes
    s3(endpoint).invalidate_cache()
    assert s3(endpoint).cat_file(f"{bucket}/runs/table/{ref.fingerprint}/data.csv") == b"a,b\n1,2\n"
    shutil.rmtree(ref.path)
    ref.verify()
