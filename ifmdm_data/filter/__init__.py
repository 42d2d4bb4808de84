"""`ifmdm-data filter` and `decide`: every input clip analysed once, decided, written as manifests.

    inputs               resolve the inputs (folders, globs, lists, URLs) to clips with stable ids
    config               the filter configuration (YAML, defaults, validation)
    preflight            before any work: can every Ray node read the inputs and reach OUT?
    pipeline             the Ray Data driver: probe, analyse work units on an actor pool, finalise
    work                 work units and their resumable results on disk (parts, tracks)
    analyse              per-unit analysis: one decode pass, faces, signals, speech, scene cuts
    scenes               scene-cut detection on the decoded frames
    identify             identity / near-duplicate signals per segment and their clustering
    dedup, fingerprint   perceptual hashes of frames, Chromaprint audio fingerprints
    decide               subset or rejection reasons, stage-2 usability (pure pandas)
    finalise             merge the parts, decide, write clips / subsets / rejected / summary
    curriculum_template  the default training curriculum, fitted to the run's subsets
"""
