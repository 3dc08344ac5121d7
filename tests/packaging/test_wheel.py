"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtual environment, runs
``notebookos --version``, ``notebookos simulate`` on its bundled trace and a notebookos kernel, with nothing read
from the source tree.

The fresh environment gets the wheel alone (``--no-deps``, before anything else is on its path), then a ``.pth``
line that appends this venv's site-packages for the dependencies. A plain path line is not a site directory: the
editable install's finder there is never loaded, so every ``notebookos`` module comes from the wheel, which the
tests check. The wheel is built from a copy of the tree (setuptools writes ``build/`` and ``*.egg-info`` where it
builds).

The JupyterLab extension's bundle (labextension/prebuilt/) is committed and the build copies it; from a tree without
it, the build runs JupyterLab's builder (setup.py), which the last test checks with node and the npm registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
# What the build reads: pyproject.toml and setup.py name the rest.
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "README.md",
    "LICENSE",
    "jupyter-config",
    "replication",
    "kernels",
    "gpu_broker",
    "server_extension",
    "frontend",
    "labextension",
)
KERNEL_TIMEOUT_S = 120
LABEXTENSION = "share/jupyter/labextensions/notebookos/"


@dataclass(frozen=True)
class FreshVenv:
    root: Path
    site_packages: Path
    wheel: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def env(self, home: Path) -> dict[str, str]:
        """Its bin first on PATH (the kernelspec's argv says `python`), Jupyter's folders of its own, and no cluster
        of the test session's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NOTEBOOKOS"))}
        for name in ("config", "data", "runtime"):
            (home / name).mkdir(parents=True, exist_ok=True)
        return dict(
            env,
            PATH=f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            JUPYTER_CONFIG_DIR=str(home / "config"),
            JUPYTER_DATA_DIR=str(home / "data"),
            JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        )

    def run(self, argv: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run in ``home``, away from the checkout (whose egg-info a `python -c` would find on its path)."""
        done = subprocess.run(argv, env=self.env(home), cwd=home, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    work = tmp_path_factory.mktemp("wheel")
    tree = _copy_tree(work / "src")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(tree),
        ],
        check=True,
        timeout=120,
    )
    [wheel] = (work / "dist").glob("notebookos-*.whl")
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=60)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(root / "bin" / "python"),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    site_packages = Path(
        subprocess.run(
            [str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site_packages / "dependencies-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return FreshVenv(root, site_packages, wheel)


def _copy_tree(tree: Path) -> Path:
    """What the build reads, without this checkout's npm dependencies, TypeScript output and bytecode."""
    tree.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source,
                tree / name,
                ignore=shutil.ignore_patterns("__pycache__", "node_modules", "lib", ".yarn", "tsconfig.tsbuildinfo"),
            )
        else:
            shutil.copy2(source, tree / name)
    return tree


def _labextension_in(wheel: Path) -> dict[str, bytes]:
    """The wheel's files under share/jupyter/labextensions/notebookos/, by their path there."""
    with zipfile.ZipFile(wheel) as archive:
        return {
            name.split(LABEXTENSION, 1)[1]: archive.read(name)
            for name in archive.namelist()
            if name.startswith("notebookos-0.1.0.data/data/" + LABEXTENSION)
        }


def _assert_a_whole_bundle(files: dict[str, bytes]) -> None:
    """package.json names the extension and the remoteEntry it loads, which is there with the style module, the
    schema and install.json (the Python package manager owns the extension)."""
    package = json.loads(files["package.json"])
    assert package["name"] == "notebookos", package
    load = package["jupyterlab"]["_build"]["load"]
    assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", load) and load in files, (load, sorted(files))
    assert {"static/style.js", "schemas/notebookos/plugin.json", "install.json"} <= set(files), sorted(files)
    assert json.loads(files["install.json"])["packageManager"] == "python"


def test_the_wheel_carries_the_labextension(fresh_venv: FreshVenv) -> None:
    _assert_a_whole_bundle(_labextension_in(fresh_venv.wheel))


def test_the_wheel_carries_license_trace_kernelspec_and_server_switch(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    done = fresh_venv.run(
        [
            fresh_venv.python,
            "-c",
            textwrap.dedent("""\
        import json, importlib.metadata as m, notebookos.server_extension as ext
        from notebookos.gpu_broker.simulator.experiment import BUNDLED_TRACE
        dist = m.distribution("notebookos")
        print(json.dumps({"module": ext.__file__, "trace": str(BUNDLED_TRACE),
                          "license": dist.metadata["License-Expression"],
                          "files": [str(f) for f in dist.files]}))"""),
        ],
        tmp_path,
    )
    found = json.loads(done.stdout)
    assert found["module"].startswith(str(fresh_venv.site_packages)), found["module"]
    assert found["trace"].startswith(str(fresh_venv.site_packages)) and Path(found["trace"]).stat().st_size > 0
    assert found["license"] == "BSD-3-Clause"
    assert any(f.endswith("licenses/LICENSE") for f in found["files"]), found["files"]
    assert (fresh_venv.root / "share/jupyter/kernels/notebookos/kernel.json").is_file()
    labextension = fresh_venv.root / "share/jupyter/labextensions/notebookos"
    assert json.loads((labextension / "package.json").read_text())["name"] == "notebookos"
    assert (labextension / "install.json").is_file() and any((labextension / "static").glob("remoteEntry.*.js"))
    switch = fresh_venv.root / "etc/jupyter/jupyter_server_config.d/notebookos.json"
    assert json.loads(switch.read_text())["ServerApp"]["jpserver_extensions"] == {"notebookos.server_extension": True}
    listed = fresh_venv.run([fresh_venv.python, "-m", "jupyter_server.extension.serverextension", "list"], tmp_path)
    assert "notebookos.server_extension enabled" in _plain(listed.stdout + listed.stderr)
    assert "notebookos.server_extension  OK" in _plain(listed.stdout + listed.stderr)


def test_version_and_simulate_from_the_installed_command(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    command = str(fresh_venv.root / "bin" / "notebookos")
    version = fresh_venv.run([command, "--version"], tmp_path)
    assert version.stdout.strip() == "notebookos 0.1.0"
    out = tmp_path / "sim"
    fresh_venv.run(
        [command, "simulate", "--policies", "notebookos", "--hours", "2", "--no-progress", "--out", str(out)], tmp_path
    )
    assert set(json.loads((out / "summary.json").read_text())) == {"notebookos"}
    assert (out / "delay_cdf.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "settings.json").read_text())["trace"].startswith(str(fresh_venv.site_packages))


def test_a_kernel_starts_from_the_installed_kernelspec(fresh_venv: FreshVenv, tmp_path: Path) -> None:
    """jupyter_client's KernelManager with the wheel's kernelspec and provisioner, no cluster running: it starts one
    on demand, from the fresh environment's Python, and its replicas run there too."""
    script = textwrap.dedent(f"""\
        import sys
        from jupyter_client.manager import start_new_kernel
        km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout={KERNEL_TIMEOUT_S})
        try:
            print("spec", km.kernel_spec.resource_dir)
            out = []
            kc.execute_interactive("import sys, notebookos.kernels as k; print(sys.prefix, k.__file__)",
                                   timeout={KERNEL_TIMEOUT_S}, output_hook=lambda msg: out.append(msg["content"]))
            print("cell", *[c["text"] for c in out if "text" in c])
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
        """)
    done = fresh_venv.run([fresh_venv.python, "-c", script], tmp_path, timeout=KERNEL_TIMEOUT_S + 60)
    # The cluster started for the kernel exits a couple of seconds after it (gpu_broker/cluster/service).
    cluster = [
        p
        for p in psutil.process_iter(["environ"])
        if (p.info["environ"] or {}).get("JUPYTER_RUNTIME_DIR") == str(tmp_path / "runtime")
    ]
    _, alive = psutil.wait_procs(cluster, timeout=30)
    assert not alive, f"still running after its last kernel: {alive}"
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("spec ", "cell ")))
    assert lines["spec"].startswith(str(fresh_venv.root)), done.stdout
    prefix, module = lines["cell"].split()
    assert prefix == str(fresh_venv.root) and module.startswith(str(fresh_venv.site_packages)), done.stdout


def _plain(text: str) -> str:
    """Without the terminal colour codes `jupyter server extension list` writes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_the_build_runs_the_labextension_builder_where_the_bundle_is_missing(tmp_path: Path) -> None:
    """A tree without labextension/prebuilt/: the build asks for the builder's packages (setup.py's setup_requires,
    which pip's build isolation installs: hatch-jupyter-builder, and jupyterlab for jlpm), runs `jlpm install` and
    `jlpm build:prod` in labextension/ and ships what JupyterLab's builder wrote. The wheel is built without build
    isolation, from this venv's jupyterlab and hatch-jupyter-builder (the test extra): pip would spend 15 s installing
    jupyterlab into an isolated environment. About 20 s here with a warm yarn cache, most of it `jlpm install`."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: JupyterLab's builder cannot run (a tree with the bundle builds without it)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    if version.returncode != 0:
        pytest.skip(f"node cannot run: {version.stderr.strip()}")
    if not (Path(sys.executable).parent / "jlpm").exists():
        pytest.skip("no jlpm next to this Python (it comes with jupyterlab): JupyterLab's builder cannot run")
    tree = _copy_tree(tmp_path / "src")
    shutil.rmtree(tree / "labextension" / "prebuilt")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTEBOOKOS_BUILD_LABEXTENSION", "SKIP_JUPYTER_BUILDER", "HATCH_JUPYTER_BUILDER_SKIP_NPM")
    }
    requires = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, setuptools.build_meta as b; print(json.dumps(b.get_requires_for_build_wheel()))",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    asked = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0] for r in json.loads(requires.stdout.splitlines()[-1])}
    assert {"hatch-jupyter-builder", "jupyterlab"} <= asked, asked
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
        + [str(tree)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, f"pip wheel exited {built.returncode}:\n{built.stdout[-8000:]}{built.stderr[-4000:]}"
    assert "build:prod" in built.stdout + built.stderr, "the builder did not run"
    [wheel] = (tmp_path / "dist").glob("notebookos-*.whl")
    files = _labextension_in(wheel)
    _assert_a_whole_bundle(files)
    # What the builder wrote in the tree is what the wheel carries.
    bundle = tree / "labextension" / "prebuilt"
    assert {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} == set(files) - {"install.json"}
