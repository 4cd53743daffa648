"""The Dockerfile as data: stages, final-stage settings and CMD (read with dockerfile-parse)."""

from __future__ import annotations

import dataclasses
import pathlib
import shlex

from dockerfile_parse import DockerfileParser

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclasses.dataclass(frozen=True)
class Image:
    base_images: list[str]
    user: str  # USER of the final stage ('' when it has none: root)
    env: dict[str, str]  # ENV of the final stage
    exposed: list[str]
    copied: list[str]  # COPY sources from the build context (not --from=stage)
    runs: list[str]  # RUN commands of every stage, in order
    command: str  # CMD, as written


def parse_dockerfile(path: pathlib.Path = DOCKERFILE) -> Image:
    parser = DockerfileParser(str(path))
    user, exposed, copied, runs = "", [], [], []
    for instruction in parser.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "FROM":
            user, exposed = "", []  # a new stage starts from scratch
        elif kind == "USER":
            user = value.strip()
        elif kind == "EXPOSE":
            exposed.extend(value.split())
        elif kind == "COPY" and not value.startswith("--from"):
            copied.extend(shlex.split(value)[:-1])
        elif kind == "RUN":
            runs.append(value)
    return Image(
        base_images=list(parser.parent_images),
        user=user,
        env=dict(parser.envs),
        exposed=exposed,
        copied=copied,
        runs=runs,
        command=parser.cmd or "",
    )


def command_argv(command: str) -> list[str]:
    """The CMD's words after ``exec`` (the shell form, as /bin/sh would split it)."""
    words = shlex.split(command)
    if words[:1] == ["exec"]:
        words = words[1:]
    return words
