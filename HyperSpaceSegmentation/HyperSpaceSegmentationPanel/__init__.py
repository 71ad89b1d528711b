"""The Qt side of the Slicer module beside its module file (HyperSpaceSegmentation.py, which Slicer loads; every
top-level .py file there is taken for a module, hence this package): the panel's settings and the texts it shows
(``settings``, ``texts``) and the installs at Apply (``dependencies``). It needs Slicer's application; the engine
and the MRML logic are in HyperSpaceSegmentationLib, which does not."""
