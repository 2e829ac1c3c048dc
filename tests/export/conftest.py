"""Fixtures of the export tests: a tiny trained hybrid, its export, the venvs without archspace."""
from __future__ import annotations

import pytest
from export_testutil import NO_ARCHSPACE, TINY, TORCH_PIN, ensure_venv, resolve_text, run_cli


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(design file, resolved, run directory) of a tiny memory + attention model trained 5 steps."""
    from archspace.training import train

    tmp = tmp_path_factory.mktemp("trained")
    path, resolved = resolve_text(TINY, tmp)
    run_dir = tmp / "run"
    train(resolved, run_dir, progress=False)
    assert (run_dir / "model.safetensors").is_file()
    return path, resolved, run_dir


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """The trained run exported through the command line."""
    out = tmp_path_factory.mktemp("exports") / "tiny"
    proc = run_cli(["export", str(trained[2]), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def reference_model(trained):
    """The trained model as archspace builds it (the test process has archspace)."""
    from safetensors.torch import load_model

    from archspace.blocks.model import SequenceModel

    model = SequenceModel(trained[1].model)
    load_model(model, str(trained[2] / "model.safetensors"))
    return model.eval()


@pytest.fixture(scope="session")
def torch_only_python() -> Path:
    # probes read the installed versions instead of importing (seconds each); the tests import them for real
    venv = ensure_venv("torch-only", [TORCH_PIN],
                       NO_ARCHSPACE + "import importlib.metadata as md; "
                       "assert md.version('torch').startswith('2.13.0'); "
                       "assert u.find_spec('transformers') is None and u.find_spec('safetensors') is None")
    return venv / "bin" / "python"


@pytest.fixture(scope="session")
def hf_python() -> Path:
    venv = ensure_venv("torch-hf", [TORCH_PIN, "transformers"],
                       NO_ARCHSPACE + "import importlib.metadata as md; "
                       "assert md.version('torch').startswith('2.13.0'); "
                       "assert md.version('transformers') and u.find_spec('transformers') is not None")
    return venv / "bin" / "python"
