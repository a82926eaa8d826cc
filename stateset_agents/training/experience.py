"""The experience library moved to :mod:`stateset_agents.agents.experience` (a deployed agent carries it without
importing training/); these names stay importable from here."""

from ..agents.experience import (
    OP_NAMES,
    AppliedOp,
    Experience,
    ExperienceLibrary,
    LibraryReport,
    Operation,
    Provenance,
    StepRecord,
    confirm,
    word_count,
)

__all__ = ["OP_NAMES", "AppliedOp", "Experience", "ExperienceLibrary", "LibraryReport", "Operation", "Provenance",
           "StepRecord", "confirm", "word_count"]
