"""A plain `pip install` of the built wheel gives a gateway that embeds and ingests offline.

The wheel is built from this checkout and installed into a fresh venv without make. Its
dependencies are not downloaded again (that would take minutes): the fresh venv sees this
project's installed dependencies through a path entry, which adds directories to sys.path but
runs none of their .pth hooks, so the project's own editable install stays invisible and
`gateway` is imported from the wheel. What the wheel itself must carry (the tokenizer, the
guardrail data, the policy schema) is therefore tested for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Never the checkout as working directory or on PYTHONPATH: `python -c` would import it first.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )
    return done


def test_wheel_installs_and_ingests_offline(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        tmp_path,
    )
    wheel = next(dist.glob("rag_gateway-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/retrieval/data/minilm-tokenizer.json" in names
    assert "gateway/retrieval/data/MINILM_TOKENIZER.md" in names  # its source and licence

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
        ).stdout.strip()
    )
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        tmp_path,
    )

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zones.md").write_text("# Zones\n\nThe speed limit in Zone B is 25 km/h near the school.\n")
    (tmp_path / "gateway.yaml").write_text("vector_store: {path: store}\n")
    where = run([str(python), "-c", "import gateway; print(gateway.__file__)"], tmp_path).stdout.strip()
    assert where.startswith(str(env_dir)), f"gateway was imported from {where}, not from the wheel"
    report = run(
        [
            str(env_dir / "bin" / "rag-gateway"),
            "ingest",
            "--config",
            "gateway.yaml",
            "--tenant",
            "t1",
            "--json",
            str(docs),
        ],
        cwd=tmp_path,
    )
    result = orjson.loads(report.stdout)
    assert result["counts"] == {"added": 1} and result["chunks_embedded"] >= 1, result
    search = (
        "from gateway.config import load_config\n"
        "from gateway.cli import _retrieval\n"
        "retrieval = _retrieval(load_config('gateway.yaml'))\n"
        "found = retrieval.search_sync('t1', 'speed limit zone b', 3, 20, None)\n"
        "print(found.hits[0].chunk.text if found.hits else 'nothing')\n"
    )
    assert "25 km/h" in run([str(python), "-c", search], cwd=tmp_path).stdout
