"""A non-editable install serves the bundled demo PRM from any directory.

The wheel is built from a copy of the tracked tree (as a clean clone has it) and installed without its
dependencies into a new virtual environment; the dependencies come from this environment's
site-packages through a plain path entry, which does not run this environment's editable-install hook,
so `service` can only come from the wheel.
"""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import httpx

from tests.helpers import DEMO_STORE, README_EXAMPLE, REPO, Server


def test_pip_install_dot_serves_the_demo_from_an_empty_directory(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    clone = tmp_path / "clone"
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", clone], check=True)
    wheel = next((tmp_path / "dist").glob("prm_service-*.whl"))

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    bin_dir = environment / "bin"
    site = subprocess.check_output([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(site.decode().strip()) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([bin_dir / "python", "-m", "pip", "-q", "install", "--no-deps", wheel], check=True)

    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    where = subprocess.check_output([bin_dir / "python", "-c", "import service; print(service.__file__)"], cwd=anywhere)
    assert where.decode().startswith(site.decode().strip()), where
    server = Server(
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=anywhere, prm=[bin_dir / "prm"]
    )
    try:
        body = httpx.post(f"{server.wait_ready().url}/score_steps", json=README_EXAMPLE, timeout=30).json()
    finally:
        server.stop()
    assert (body["model"], body["model_version"]) == ("demo-arith", DEMO_STORE.get("demo-arith").version)
    right, wrong, _ = body["step_scores"]
    assert right > 0.5 and wrong < 0.1, body
