#!/usr/bin/env bash
# The pretraining-length run (issue 27): cover + cycle term on the 189-volume MRI pool, 20,000 iterations of 2 pairs
# (2 gloo processes x batch 1), snapshots kept at 2,800 / 5,000 / 10,000 / 20,000 iterations. Resumable: rerun this
# script and it continues from the newest checkpoint in pretrain/ (the bundles' exact resume); on a fresh clone it
# first restores the checkpoint that `benchmarks/pretraining_length.py --stages keep` committed under resume/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=benchmarks/results/pretraining_length
if ! ls "$here"/pretrain/checkpoint_*.pt >/dev/null 2>&1 && ls "$here"/resume/checkpoint_*.pt >/dev/null 2>&1; then
    mkdir -p "$here/pretrain/runs"
    cp "$here"/resume/checkpoint_*.pt "$here/resume/metadata.json" "$here/pretrain/"
    cp "$here"/resume/runs/* "$here/pretrain/runs/"
fi
export OMP_NUM_THREADS=1
exec torchrun --nproc_per_node=2 --master_port "${PORT:-29741}" -m monai.bundle run \
    --config_file "['bundles/cover_mri/train.json','bundles/cover_mri/pretext_cycle.json','bundles/cover_mri/multi_gpu_train.json']" \
    --datalist data_lists/mri_pretraining_pool.json --dataset_dir ../shared/data \
    --patch_size "[48,48,32]" --context_size "[64,64,48]" --batch_size 1 \
    --epochs 500 --iterations_per_epoch 40 --checkpoint_interval 200 \
    --snapshot_iterations "[2800,5000,10000,20000]" \
    --ckpt_dir "$here/pretrain" --output_dir "$here/pretrain/runs"
