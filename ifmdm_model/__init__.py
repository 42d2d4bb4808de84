"""IF-MDM, the model side: train the two stages on the data side's shards, generate talking heads, evaluate, personalise.

Packages and modules. Dependencies point one way: cli -> tune / eval -> infer -> stage2 -> stage1 ->
layers; the trainers use training, checkpoint and curriculum (which reads the stage registries);
lora and checkpoint import no stage pipeline; nothing here is imported by `ifmdm_data`.

    stage1/      stage 1 (paper Sec. 3.1): the motion autoencoder (model, StyleGAN2 layers, local flow), losses, training,
                 learning (small-scale learning checks)
    stage2/      stage 2 (paper Sec. 3.2): the motion DiT, its conditioning modules, diffusion and CFG, motion latents, training
    infer/       inference: portrait + speech -> mp4 (the recursive chunk sampler), driving-video transfer
    eval/        evaluation: stage-1 reconstruction, talking-head metrics on held-out clips
    tune/        personalisation (paper Fig. 6): LoRA adapters on stage 1 and stage 2
    cli/         the console scripts `ifmdm-train`, `ifmdm-infer`, `ifmdm-eval`, `ifmdm-tune`: parse, call, report
    training     training machinery both stages share: options, DDP, resume, EMA, autocast, TensorBoard
    checkpoint   checkpoint folders: save, find the latest, load, the stage-1 checkpoint of a run
    curriculum   the training curriculum (manifests/curriculum.yaml): dataclasses, loading, validation
    lora         LoRA adapters: add, merge, save, find, apply (trained by tune, applied by infer and eval)
    testing      small random-init runs for tests and benchmarks (`save_random_run`)

Paper concept -> where it lives:

    motion autoencoder (E_v, D)     ifmdm_model.stage1.model.MotionAutoencoder (registry: build_stage1)
    local flow module (Fig. 4)      ifmdm_model.stage1.local_flow.LocalFlowModule (masks: log_spatial_masks)
    local flow loss                 ifmdm_model.stage1.losses.local_flow_loss
    latent axis (LIA directions)    ifmdm_model.stage1.model.latent_axis_basis, latent_axis_style
    implicit motion generator       ifmdm_model.stage2.model.MotionDiT (registry: build_stage2)
    framewise temporal guidance     ifmdm_model.stage2.guidance.FramewiseTemporalGuidance
    motion statistics guidance      ifmdm_model.stage2.guidance.MotionStatisticsGuidance
    motion hint m'                  ifmdm_model.stage2.guidance.MotionHint
    speech-only CFG                 ifmdm_model.stage2.diffusion.cfg_model_fn (rescale: rescale_guided_x0)
    recursive chunk sampler         ifmdm_model.infer.chunks.sample_motion_chunks
    curriculum (coarse -> hard)     ifmdm_model.curriculum.load_curriculum, Curriculum
    LoRA personalisation (Fig. 6)   ifmdm_model.lora (adapters), ifmdm_model.tune.stage1.tune_stage1
"""
