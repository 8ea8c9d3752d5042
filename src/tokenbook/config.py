"""Hydra composition of conf/: config.yaml + scale/<scale> + model/<model> + chapter/<slug> + overrides.

Per-scale values are written inline in chapter configs as `${by_scale:SMOKE,CPU,GPU}`, so a user
override (`chapter.n_prompts=16`) simply replaces the knob at every scale. Errors name the valid
choices: an unknown group option lists the options, an unknown key lists the keys at that level.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from . import paths


class ConfigError(ValueError):
    """A config or override that cannot be composed; the message says what would be valid."""


def _by_scale(smoke, cpu, gpu, *, _root_):
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[_root_.scale.name]


if not OmegaConf.has_resolver("by_scale"):
    OmegaConf.register_new_resolver("by_scale", _by_scale)


def options(group: str) -> list[str]:
    d = paths.CONF / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def compose(slug: str | None, scale: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the config for one chapter at one scale. Returns a resolved, read-only DictConfig."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    if scale not in paths.SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(paths.SCALES)}")
    overrides = list(overrides or [])
    for o in overrides:
        if not isinstance(o, str) or "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value (e.g. chapter.n_prompts=16, "
                              f"model=random-llama)")
    base = [f"scale={scale}"] + ([f"chapter={slug}"] if slug else [])
    try:
        with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3", job_name="tokenbook"):
            cfg = hydra_compose("config", overrides=base + overrides)
    except MissingConfigException as err:
        raise ConfigError(_explain_missing(str(err))) from None
    except HydraException as err:
        raise ConfigError(_explain_override(str(err), slug, scale)) from None
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except Exception as err:  # omegaconf raises several types; all mean the same to the user
        raise ConfigError(f"config for {slug!r} at scale {scale!r} cannot be resolved: {err}") from None
    OmegaConf.set_struct(resolved, True)
    OmegaConf.set_readonly(resolved, True)
    return resolved


def _explain_missing(msg: str) -> str:
    m = re.search(r"Could not find '([^/']+)/([^']+)'", msg)
    if m:
        group, option = m.groups()
        return f"unknown {group} {option!r}; valid choices for {group}: {', '.join(options(group)) or 'none'}"
    return msg


def _explain_override(msg: str, slug: str | None, scale: str) -> str:
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if not m:
        return msg
    key = m.group(1)
    try:
        from hydra import compose as hydra_compose, initialize_config_dir
        with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3", job_name="tokenbook"):
            cfg = hydra_compose("config", overrides=[f"scale={scale}"] + ([f"chapter={slug}"] if slug else []))
    except Exception:
        return f"unknown config key {key!r}; " + msg.splitlines()[0]
    # walk down the dotted key until the first part that does not exist
    parts, node, parent = key.split("."), cfg, []
    for part in parts:
        if not isinstance(node, DictConfig) or part not in node:
            break
        node, parent = node[part], parent + [part]
    where = f"'{'.'.join(parent)}'" if parent else "the top level"
    valid = sorted(map(str, node.keys())) if isinstance(node, DictConfig) else []
    if not valid:
        return f"unknown config key {key!r}; " + msg.splitlines()[0]
    return f"unknown config key {key!r}; valid keys in {where}: {', '.join(valid)}"


def to_dict(cfg: DictConfig | ListConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def config_files(slug: str | None, scale: str) -> list[Path]:
    """The files a chapter's composed config can depend on (for content hashing)."""
    files = [paths.CONF / "config.yaml", paths.CONF / "scale" / f"{scale}.yaml"]
    files += sorted((paths.CONF / "model").glob("*.yaml"))
    if slug:
        files.append(paths.CONF / "chapter" / f"{slug}.yaml")
    return files
