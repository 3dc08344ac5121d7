"""The one build step pyproject.toml cannot declare: the JupyterLab extension's bundle.

labextension/prebuilt/ is committed, so a build from a checkout copies it and needs no node. Where it is missing (a
tree without it), or ``NOTEBOOKOS_BUILD_LABEXTENSION=1`` asks, the build first runs JupyterLab's builder with the
function JupyterLab's extension template runs from hatchling: hatch-jupyter-builder's ``npm_builder``, ``jlpm install``
and ``jlpm build:prod`` in labextension/ (node 20.19+ and the npm registry). The template's hatchling cannot be this
package's backend: its editable install refuses a path rewrite that adds a prefix (replication/ ->
notebookos/replication), and the test suite imports ``notebookos.*`` from the editable checkout.

Only such a build asks for the builder's Python packages (``setup_requires``: setuptools' build requirements of the
moment, which pip installs in the isolated build environment). The template lists them in build-system.requires,
where every build would install jupyterlab for nothing: about 40 s more for `pip install -e .` here.

The bundle then ships as the data files pyproject.toml declares under share/jupyter/labextensions/notebookos; its
globs are expanded again once the bundle exists (setuptools expands them when it reads the configuration).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tomllib
import warnings

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.command.sdist import sdist

LABEXTENSION = "labextension"
BUNDLE = f"{LABEXTENSION}/prebuilt"
SHARE = "share/jupyter/labextensions/notebookos"
FORCE = "NOTEBOOKOS_BUILD_LABEXTENSION"
# hatch-jupyter-builder's npm_builder, and jlpm, which comes with jupyterlab.
BUILDER_REQUIRES = ["hatch-jupyter-builder>=0.5", "jupyterlab>=4.2"]


def forced() -> bool:
    return os.environ.get(FORCE, "") not in ("", "0")


def bundle_missing() -> list[str]:
    """What of the bundle is missing: the builder writes all of these (hatch-jupyter-builder's ensured-targets)."""
    wanted = {
        f"{BUNDLE}/package.json": os.path.isfile(f"{BUNDLE}/package.json"),
        f"{BUNDLE}/static/style.js": os.path.isfile(f"{BUNDLE}/static/style.js"),
        f"{BUNDLE}/static/remoteEntry.*.js": bool(glob.glob(f"{BUNDLE}/static/remoteEntry.*.js")),
    }
    return [path for path, there in wanted.items() if not there]


class build_labextension(Command):
    description = "build labextension/prebuilt/ with JupyterLab's builder where it is missing (or asked for)"
    user_options: list[tuple[str, str | None, str]] = []
    editable_mode = False  # setuptools sets it for `pip install -e`

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        if forced() or bundle_missing():
            try:
                self._build()
            except Exception as e:
                # Like the template's optional-editable-build: an editable install still works, without the bundle.
                if not self.editable_mode:
                    raise
                warnings.warn(f"the JupyterLab extension was not built: {e}", stacklevel=1)
        missing = bundle_missing()
        if missing:
            message = f"the JupyterLab extension's bundle lacks {', '.join(missing)} after the builder ran"
            if not self.editable_mode:
                raise RuntimeError(message)
            warnings.warn(f"{message}: installing without it", stacklevel=1)
        self._declare_bundle(present=not missing)

    def _build(self) -> None:
        try:
            from hatch_jupyter_builder import npm_builder
        except ImportError as e:
            raise RuntimeError(
                f"building {BUNDLE}/ needs {' and '.join(BUILDER_REQUIRES)}: build with pip's build isolation, which"
                " installs them, or install them first"
            ) from e
        # The build environment's bin is on PATH under pip's build isolation; this interpreter's is next to it. The
        # package.json scripts call jlpm by name, hence its folder on PATH.
        jlpm = shutil.which("jlpm") or os.path.join(os.path.dirname(sys.executable), "jlpm")
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(jlpm), os.environ.get("PATH", "")])
        self.announce(f"building {BUNDLE}/ with JupyterLab's builder ({jlpm} build:prod)", level=2)
        npm_builder(
            "wheel",
            "editable" if self.editable_mode else "standard",
            path=LABEXTENSION,
            build_cmd="build:prod",
            npm=jlpm,
        )

    def _declare_bundle(self, present: bool) -> None:
        """pyproject.toml's data files under SHARE, their globs expanded now (none where the bundle is absent)."""
        with open("pyproject.toml", "rb") as f:
            declared = tomllib.load(f)["tool"]["setuptools"]["data-files"]
        kept = [(dest, files) for dest, files in self.distribution.data_files or [] if not dest.startswith(SHARE)]
        bundle = [
            (dest, sorted(path for pattern in patterns for path in glob.glob(pattern)))
            for dest, patterns in declared.items()
            if dest.startswith(SHARE) and present
        ]
        self.distribution.data_files = kept + bundle

    def get_outputs(self) -> list[str]:
        return []

    def get_source_files(self) -> list[str]:
        return []


class build_with_labextension(build):
    # First, so that install_data (which runs after build) finds the bundle among the data files.
    sub_commands = [("build_labextension", None), *build.sub_commands]


class sdist_with_labextension(sdist):
    def run(self) -> None:
        self.run_command("build_labextension")
        super().run()


setup(
    setup_requires=BUILDER_REQUIRES if forced() or bundle_missing() else [],
    cmdclass={
        "build_labextension": build_labextension,
        "build": build_with_labextension,
        "sdist": sdist_with_labextension,
    },
)
