"""What the Slicer Extensions Index checker (``scripts/check_description_files.py`` of Slicer/ExtensionsIndex)
checks before it accepts ``TwoFiveCNN.json``, done here so a submission is not the first time we find out.

The checker downloads the catalog-entry schema and keeps its accepted categories in its own code; both
are committed under ``Testing/data/`` (with where they came from), so these tests run offline. The
checker reads the icon and screenshot URLs out of ``CMakeLists.txt`` with its own patterns, and so do
the tests: a URL it cannot find there or that names no file of the repository fails, it is never skipped.
"""

from __future__ import annotations

import ast
import json
import re
import urllib.parse
from pathlib import Path

import pytest
from helpers import MODULES, ROOT, cmake_commands, cmake_variables, parent_assignments
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
CATALOG = ROOT / "TwoFiveCNN.json"
CMAKE = ROOT / "CMakeLists.txt"
SCHEMA_FILE = DATA / "slicer-extension-catalog-entry-schema-v1.0.1.json"
CATEGORIES_FILE = DATA / "extensions_index_categories.json"
# The checker's patterns: one quoted string each, URLs in it separated by white space.
ICON_PATTERN = re.compile(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', re.IGNORECASE)
SCREENSHOTS_PATTERN = re.compile(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', re.IGNORECASE)


def entry() -> dict:
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def checker_urls(pattern: re.Pattern) -> list[str]:
    """The URLs the checker finds in the top-level CMakeLists.txt with ``pattern`` (first match, as it does)."""
    found = pattern.findall(CMAKE.read_text(encoding="utf-8"))
    return found[0].split() if found else []


def raw_prefix() -> str:
    """Where a file of the repository at ``scm_revision`` is served from: what the URLs must start with."""
    scm = urllib.parse.urlsplit(entry()["scm_url"])
    owner_repository = scm.path.removesuffix(".git").strip("/")
    return f"https://raw.githubusercontent.com/{owner_repository}/{entry()['scm_revision']}/"


def repository_file(url: str) -> Path:
    assert url.startswith(raw_prefix()), f"{url} is not a file of {entry()['scm_url']} at {entry()['scm_revision']}"
    return ROOT / url[len(raw_prefix()):]


# --- the description file ------------------------------------------------------------------------


def test_description_file_is_named_after_the_cmake_project():
    """The checker takes the extension's name from the file name and wants it in ``project()``."""
    projects = [arguments for name, arguments in cmake_commands(CMAKE) if name.lower() == "project"]
    assert projects and projects[0][0] == CATALOG.stem


def test_catalog_entry_validates_against_its_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    # The committed file is the schema the entry names (the checker downloads that URL).
    assert entry()["$schema"] == schema["$id"].split("#")[0]
    assert SCHEMA_FILE.name == entry()["$schema"].rsplit("/", 1)[1]
    jsonschema.validate(entry(), schema)
    # ...and the validation has teeth: a key the schema does not know, or a missing required one, fails.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry(), "homepage": "https://example.org"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({k: v for k, v in entry().items() if k != "category"}, schema)


def test_catalog_entry_builds_from_the_top_level_folder():
    assert entry()["build_subdirectory"] == "."
    assert entry()["scm_revision"] == "main" and entry()["tier"] in (1, 3, 5)


def test_category_is_accepted_by_the_index():
    accepted = json.loads(CATEGORIES_FILE.read_text(encoding="utf-8"))
    assert "check_description_files.py" in accepted["source"] and re.fullmatch(r"[0-9a-f]{40}", accepted["commit"])
    assert entry()["category"] in accepted["categories"], f"the Extensions Index refuses {entry()['category']!r}"
    assert cmake_variables(CMAKE)["EXTENSION_CATEGORY"] == [entry()["category"]]


def test_build_dependencies_equal_extension_depends():
    depends = " ".join(cmake_variables(CMAKE)["EXTENSION_DEPENDS"]).split()
    assert entry()["build_dependencies"] == ([] if depends == ["NA"] else depends) == ["PyTorch"]


def test_scm_url_names_a_slicer_repository():
    """The checker wants a git or https URL and a repository named Slicer<Name>."""
    url = urllib.parse.urlsplit(entry()["scm_url"])
    assert url.scheme in ("git", "https")
    assert "slicer" in Path(url.path).stem.lower()


# --- CMakeLists.txt, as the checker reads it -----------------------------------------------------


def test_icon_url_names_the_extension_icon():
    (url,) = checker_urls(ICON_PATTERN)
    with Image.open(repository_file(url)) as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)


def test_screenshot_urls_name_screenshots_in_the_repository():
    urls = checker_urls(SCREENSHOTS_PATTERN)
    assert urls, "the checker finds no EXTENSION_SCREENSHOTURLS (one quoted string, URLs separated by spaces)"
    assert urls == " ".join(cmake_variables(CMAKE)["EXTENSION_SCREENSHOTURLS"]).split()
    for url in urls:
        path = repository_file(url)
        assert path.is_file(), f"{url}: no such file in the repository (make it with scripts/make_screenshots.py)"
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 800, f"{path.name} is not a screenshot"
            image.verify()


def test_description_is_one_or_two_sentences():
    (description,) = cmake_variables(CMAKE)["EXTENSION_DESCRIPTION"]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", description.strip()) if s]
    assert 1 <= len(sentences) <= 2, sentences
    assert "not for clinical use" in description


# --- one homepage, one list of contributors ------------------------------------------------------


def test_homepage_and_contributors_come_from_one_place():
    """CMakeLists.txt holds them; the modules' help (module_settings.HOMEPAGE), the repository URL and each
    module's contributors must say the same."""
    from TwoFiveCNNLib.app.module_settings import HOMEPAGE

    variables = cmake_variables(CMAKE)
    (homepage,) = variables["EXTENSION_HOMEPAGE"]
    assert HOMEPAGE == homepage
    assert entry()["scm_url"] == homepage + ".git"
    contributors = [c.strip() for c in " ".join(variables["EXTENSION_CONTRIBUTORS"]).split(",")]
    for module in MODULES:
        listed = parent_assignments(module)["contributors"]
        assert ast.literal_eval(listed) == contributors, f"{module}.py: contributors differ from CMakeLists.txt"
