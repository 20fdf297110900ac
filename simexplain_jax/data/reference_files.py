"""The files of the SANE reference code that ship with this package (``data/reference/``).

* ``awa2_test``, ``awa2_valid``, ``polyvore_outfits_test``: the pair lists the paper's AUCs and
  Table 1 are measured on, 20,000 ``img1 img2 label`` lines each (half positive);
* ``polyvore_attribute_list.txt``: the names of SANE's 205 Polyvore attributes, in index order.

A pair-list argument (``test_pairs`` in the configs) is either ``"reference:NAME"``, one of
``PAIR_LISTS``, found inside the installed package whatever the working directory, or the path
of a user's own file. ``read_pair_file`` reads either; ``check_pair_file`` fails early, naming the
argument, on an unknown name or a path that is not a file.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib

from simexplain_jax.data.pairs import Pair, parse_pairs, read_pairs

PREFIX = "reference:"
PAIR_LISTS = {
    "awa2_test": "awa2_test_pairs.txt",
    "awa2_valid": "awa2_valid_pairs.txt",
    "polyvore_outfits_test": "polyvore_outfits_test_pairs.txt",
}
POLYVORE_ATTRIBUTES = "polyvore_attribute_list.txt"
FILES = (*PAIR_LISTS.values(), POLYVORE_ATTRIBUTES)


def _file_name(name: str) -> str:
    if name in PAIR_LISTS:
        return PAIR_LISTS[name]
    if name in FILES:
        return name
    raise ValueError(f"unknown reference file {name!r}; known: {sorted(PAIR_LISTS)} or {list(FILES)}")


def reference_path(name: str) -> pathlib.Path:
    """The packaged file ``name`` (a key of ``PAIR_LISTS`` or a file name of ``FILES``) on disk."""
    resource = importlib.resources.files("simexplain_jax.data").joinpath("reference", _file_name(name))
    path = pathlib.Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"the packaged reference file {path} is missing: the installation is incomplete "
                                f"(reinstall simexplain_jax)")
    return path


def read_reference_pairs(name: str) -> list[Pair]:
    """The packaged pair list ``name`` (a key of ``PAIR_LISTS``)."""
    if name not in PAIR_LISTS:
        raise ValueError(f"unknown reference pair list {name!r}; known: {sorted(PAIR_LISTS)}")
    with open(reference_path(name)) as f:
        return parse_pairs(f, source=PREFIX + name)


def polyvore_attribute_names() -> list[str]:
    """SANE's 205 Polyvore attribute names, in the order of the attribute indices."""
    with open(reference_path(POLYVORE_ATTRIBUTES)) as f:
        return [line.strip() for line in f if line.strip()]


def check_pair_file(spec: str, argument: str = "test_pairs") -> None:
    """Checks a pair-list argument: a packaged name, or a file that parses (every line
    ``img1 img2 label``), so that a bad file is reported before any long work.

    Args:
      spec: ``"reference:NAME"`` with a NAME of ``PAIR_LISTS``, or the path of an existing file.
      argument: the argument's name, for the error message.

    Raises:
      ValueError: an unknown packaged pair list.
      FileNotFoundError: a path that is not a file.
    """
    if spec.startswith(PREFIX):
        name = spec[len(PREFIX):]
        if name not in PAIR_LISTS:
            raise ValueError(f"{argument} {spec!r}: unknown packaged pair list {name!r}; "
                             f"known: {', '.join(PREFIX + n for n in sorted(PAIR_LISTS))}")
        return
    if not os.path.isfile(spec):
        what = "is a folder, not a pair file" if os.path.isdir(spec) else "does not exist"
        raise FileNotFoundError(f"{argument} {spec!r} {what} (relative paths start from the working directory "
                                f"{os.getcwd()!r}); pass a pair file or one of "
                                f"{', '.join(PREFIX + n for n in sorted(PAIR_LISTS))}")
    try:
        read_pairs(spec)
    except (OSError, ValueError) as err:
        raise ValueError(f"{argument}: {err}") from None


def read_pair_file(spec: str, argument: str = "test_pairs") -> list[Pair]:
    """Reads a pair list.

    Args:
      spec: ``"reference:NAME"`` (packaged) or a file path (see ``check_pair_file``).
      argument: the argument's name, for error messages.

    Returns:
      The ``Pair``s, in file order.
    """
    check_pair_file(spec, argument)
    if spec.startswith(PREFIX):
        return read_reference_pairs(spec[len(PREFIX):])
    return read_pairs(spec)
