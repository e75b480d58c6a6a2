"""Counting each cell once: stage motion, blur, and detections matched on the slide."""

from leukedge.runtime.tracking.associate import CellTracks, Detection, Sighting, Track
from leukedge.runtime.tracking.motion import FrameMotion, MotionTracker

__all__ = ["CellTracks", "Detection", "FrameMotion", "MotionTracker", "Sighting", "Track"]
