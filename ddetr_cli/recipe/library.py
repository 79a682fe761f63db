"""The recipes that ship with ddetr, by name: `ddetr train refine`, `base: refine`.

They are the repository's top-level `recipes/*.yaml`; the package reaches them through
`ddetr_cli/recipes`, a link to that folder that the wheel turns into copies. Each file starts
with comment lines: their first sentence says what the recipe is; "COCO val2017 AP N" states
the official result, when there is one.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ddetr_cli.errors import DdetrError

log = logging.getLogger(__name__)

PACKAGED_DIR = Path(__file__).resolve().parents[1] / "recipes"
_AP = re.compile(r"COCO val2017 AP ([0-9.]+)")


@dataclass(frozen=True)
class PackagedRecipe:
    name: str
    path: Path
    description: str
    coco_ap: float | None  # official COCO val2017 AP, when the recipe reproduces a release


def packaged_recipes() -> dict[str, Path]:
    """name -> file of every packaged recipe, sorted by name."""
    return {p.stem: p for p in sorted(PACKAGED_DIR.glob("*.yaml"))}


def describe(path: Path) -> PackagedRecipe:
    """Name, first comment line and official AP of a recipe file."""
    comments = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    match = _AP.search(" ".join(comments))
    # The first sentence of the first comment paragraph.
    paragraph = " ".join(itertools.takewhile(bool, comments))
    description = re.split(r"(?<=\.)\s", paragraph + " ", maxsplit=1)[0].rstrip(".: ")
    return PackagedRecipe(path.stem, path, description, float(match.group(1)) if match else None)


def _unknown(name: str) -> DdetrError:
    names = ", ".join(packaged_recipes())
    return DdetrError(f"recipe '{name}' not found: not a file, nor a packaged recipe ({names})")


def packaged_path(name: str) -> Path:
    """The file of a packaged recipe named `name` (or `name.yaml`)."""
    path = packaged_recipes().get(Path(name).stem if name.endswith(".yaml") else name)
    if path is None:
        raise _unknown(name)
    return path


def resolve_recipe(arg: str | Path) -> Path:
    """A recipe argument as a file: an existing path is itself; a name (`refine`) or a missing
    `recipes/NAME.yaml` means the packaged recipe NAME, said in one line."""
    path = Path(arg)
    if path.exists():
        return path
    looks_like_name = path.suffix == "" and len(path.parts) == 1
    looks_like_packaged = path.suffix == ".yaml" and path.parent.name in ("recipes", "")
    if looks_like_name or looks_like_packaged:
        if path.stem in packaged_recipes():
            found = packaged_path(path.stem)
            if looks_like_packaged:
                log.warning("%s not found here: using the packaged recipe '%s'", arg, path.stem)
            return found
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise DdetrError(f"recipe file not found: {path}")
    raise _unknown(str(arg))


def resolve_base(base: str, including_file: Path) -> Path:
    """A recipe's `base:`: a packaged recipe's name, else a path relative to the including
    file."""
    if Path(base).suffix == "" and "/" not in base and base in packaged_recipes():
        return packaged_path(base)
    candidate = including_file.parent / base
    if candidate.is_file():
        return candidate
    if Path(base).stem in packaged_recipes() and Path(base).parent == Path("."):
        # A copied recipe (`ddetr recipe copy`) still names its base as a sibling file.
        return packaged_path(Path(base).stem)
    raise DdetrError(
        f"{including_file}: base recipe '{base}' not found (looked for {candidate} and the "
        f"packaged recipes: {', '.join(packaged_recipes())})"
    )


def copy_recipe(name: str, destination: str | Path, overwrite: bool = False) -> Path:
    """Copy a packaged recipe to a file to edit; never replaces an existing file unless asked."""
    source = packaged_path(name)
    destination = Path(destination)
    if destination.is_dir():
        destination = destination / source.name
    if destination.exists() and not overwrite:
        raise DdetrError(f"{destination} exists; choose another name or pass --force")
    from ddetr_cli.files import atomic_write

    with atomic_write(destination, "w") as out, source.open(encoding="utf-8") as src:
        shutil.copyfileobj(src, out)
    return destination
