"""Files: image formats and extensions (``formats``), input images read and checked (``images``, which also gives
the names of ``formats`` and ``outputs``), outputs written safely (``outputs``: label maps, Slicer segmentations,
voxel maps, atomic files), the other files a user names: JSON and CSV (``input_files``), and model files
(``model_file``)."""
