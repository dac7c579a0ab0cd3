"""Which container of a replica's pod template is the main one, and what it runs.

The operator's builders, ``kubelearn local`` and the schema's rules (Python and CEL) take the
rule from here: the container named ``tensorflow`` (TFJob's convention), else the one named
``kubelearn``, else the only container. A template with several containers and neither name
has no main container and is refused. Only the main container is given TF_CONFIG, the
kubelearn environment, the model directory, the port and kubelearn's defaults; the others
(sidecars) are left as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The names that make a container the main one, first match wins.
MAIN_CONTAINER_NAMES = ("tensorflow", "kubelearn")
#: The name given to the main container the builders add to a template without containers.
DEFAULT_CONTAINER_NAME = "kubelearn"
#: The most containers a replica's template may list (a bound the API server's CEL needs).
MAX_CONTAINERS = 32
#: A container's name: a DNS-1123 label.
MAX_CONTAINER_NAME = 63

NO_MAIN_CONTAINER = ("has several containers and none is named tensorflow or kubelearn: "
                     "name the one that runs the replica tensorflow (or kubelearn)")


def template_containers(template: Mapping[str, Any] | None) -> list[Any]:
    """The ``spec.containers`` of a pod template, [] when it gives none."""
    spec = (template or {}).get("spec") or {}
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    return list(containers) if isinstance(containers, list) else []


def main_container_index(containers: Sequence[Any]) -> int | None:
    """The index of the main container: the one named ``tensorflow``, else ``kubelearn``,
    else the only one; None when there are none, or several and neither name."""
    for wanted in MAIN_CONTAINER_NAMES:
        for index, container in enumerate(containers):
            if isinstance(container, Mapping) and container.get("name") == wanted:
                return index
    return 0 if len(containers) == 1 else None


def has_main_container(containers: Sequence[Any]) -> bool:
    """Whether a template's containers say which is the main one (none at all does: the
    builders add it)."""
    return not containers or main_container_index(containers) is not None


def main_container(template: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The template's main container as written ({} when it gives none)."""
    containers = template_containers(template)
    index = main_container_index(containers)
    return containers[index] if index is not None else {}


def own_command(container: Mapping[str, Any]) -> list[str]:
    """What the container says it runs: its command then its args ([]: the image's
    ENTRYPOINT and CMD)."""
    return [*(container.get("command") or []), *(container.get("args") or [])]


def runs_something(container: Mapping[str, Any], image: str | None) -> bool:
    """Without an experiment function, whether a main container runs a program of its own:
    an image of its own (``image`` is the spec's image), or a command or args."""
    return bool(container.get("image") or image or own_command(container))


def has_own_image(container: Mapping[str, Any]) -> bool:
    """Whether the template gives the main container an image of its own (a user's image,
    not the runner's)."""
    return bool(container.get("image"))


def main_container_cel(containers: str, test: str) -> str:
    """CEL: whether the main container of the list ``containers`` passes ``test`` (a CEL
    expression on ``c``); false when the list names no main container."""
    named = [f"{containers}.exists(c, has(c.name) && c.name == '{n}')"
             for n in MAIN_CONTAINER_NAMES]
    picks = [f"{containers}.exists(c, has(c.name) && c.name == '{n}' && ({test}))"
             for n in MAIN_CONTAINER_NAMES]
    only = f"(size({containers}) == 1 && {containers}.all(c, {test}))"
    return f"({named[0]} ? {picks[0]} : ({named[1]} ? {picks[1]} : {only}))"


def has_main_container_cel(containers: str) -> str:
    """CEL of :func:`has_main_container` on the list ``containers``."""
    names = " || ".join(f"{containers}.exists(c, has(c.name) && c.name == '{n}')"
                        for n in MAIN_CONTAINER_NAMES)
    return f"(size({containers}) <= 1 || {names})"
