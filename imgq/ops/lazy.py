"""Modules imported on first use: OpenCV and NumPy cost 0.15-0.3 s to import, which every
command would pay at start-up although only some operations need them."""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """Stands in for a module and imports it the first time an attribute is read."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_target"] = None

    def __getattr__(self, attr: str):
        target = self.__dict__["_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_target"] = target
        return getattr(target, attr)


cv2 = LazyModule("cv2")
np = LazyModule("numpy")
