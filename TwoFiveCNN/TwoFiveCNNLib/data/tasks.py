"""What a model predicts: each output class is a group of MosMed classes (severity, binary, custom)."""

from __future__ import annotations

from dataclasses import dataclass

from .index import CLASS_NAMES, DatasetError, normalize_label


@dataclass(frozen=True)
class TaskDefinition:
    """What the model predicts: each output class is a group of MosMed classes."""

    name: str
    groups: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        groups = tuple(tuple(group) for group in self.groups)
        if len(groups) < 2 or any(not group for group in groups):
            raise DatasetError(f"task {self.name!r}: needs at least two non-empty groups, got {groups}.")
        seen: set[str] = set()
        for name in (name for group in groups for name in group):
            if name not in CLASS_NAMES:
                raise DatasetError(
                    f"task {self.name!r}: unknown class {name!r}; use {', '.join(CLASS_NAMES)}."
                )
            if name in seen:
                raise DatasetError(f"task {self.name!r}: class {name} is in more than one group.")
            seen.add(name)
        missing = [name for name in CLASS_NAMES if name not in seen]
        if missing:
            raise DatasetError(
                f"task {self.name!r}: class(es) {', '.join(missing)} are in no group; "
                f"every class must be in one."
            )
        object.__setattr__(self, "groups", groups)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Display name per group: "CT-0", a run like "CT-1..4", or "CT-0+CT-2" for other groups."""
        return tuple(_group_display_name(group) for group in self.groups)

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def label_index(self, label: str) -> int:
        """The output class of a MosMed label."""
        canonical = normalize_label(label)
        if canonical is None:
            raise DatasetError(f"unknown label {label!r}; use one of {', '.join(CLASS_NAMES)}.")
        return next(g for g, group in enumerate(self.groups) if canonical in group)

    @classmethod
    def severity(cls) -> TaskDefinition:
        return cls("severity", tuple((name,) for name in CLASS_NAMES))

    @classmethod
    def binary(cls) -> TaskDefinition:
        return cls("binary", (CLASS_NAMES[:1], CLASS_NAMES[1:]))

    @classmethod
    def from_groups(cls, spec: str) -> TaskDefinition:
        """Parse groups like ``"CT-0|CT-1,CT-2|CT-3,CT-4"``: '|' separates groups, ',' classes in a group."""
        groups = tuple(
            tuple(normalize_label(name) or name.strip() for name in part.split(",") if name.strip())
            for part in spec.split("|")
        )
        return cls("|".join(",".join(group) for group in groups), groups)

    @classmethod
    def from_name(cls, name_or_groups: str) -> TaskDefinition:
        """``"severity"``, ``"binary"`` or a groups string (see :meth:`from_groups`)."""
        key = name_or_groups.strip().lower()
        if key == "severity":
            return cls.severity()
        if key == "binary":
            return cls.binary()
        return cls.from_groups(name_or_groups)

    def to_dict(self) -> dict:
        return {"name": self.name, "groups": [list(g) for g in self.groups],
                "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data: dict) -> TaskDefinition:
        return cls(str(data["name"]), tuple(tuple(g) for g in data["groups"]))


def _group_display_name(group: tuple[str, ...]) -> str:
    if len(group) == 1:
        return group[0]
    ordered = sorted(group, key=CLASS_NAMES.index)
    positions = [CLASS_NAMES.index(name) for name in ordered]
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return f"{ordered[0]}..{positions[-1]}"
    return "+".join(ordered)
