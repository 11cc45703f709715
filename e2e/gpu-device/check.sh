#!/bin/bash
# kiln GPU stage, real check on a machine with an NVIDIA GPU (see README.md here):
# real nvidia-smi, real gpu_burn (built here with nvcc from .gpu/gpu-burn), and the
# real coordinator and agent (static musl builds in .gpu/bin): offline ticket ->
# agent run -> bundle -> import; everything worth keeping lands in $OUT.
set -u
G=$PWD/.gpu
HERE=$(cd "$(dirname "$0")" && pwd)
exec > >(tee "$OUT/log.txt") 2>&1
t0=$(date +%s)
echo "== machine"; uname -r; nvidia-smi -L; nvidia-smi | head -4
Q="index,pci.bus_id,name,memory.total,temperature.gpu,power.draw,ecc.errors.uncorrected.volatile.total,clocks.sm"
echo "== kiln's query, raw"
nvidia-smi --query-gpu=$Q --format=csv,noheader,nounits > "$OUT/query.csv"; echo "rc=$?"; cat "$OUT/query.csv"
nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1
L="index,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max,clocks_throttle_reasons.hw_slowdown,clocks_throttle_reasons.hw_thermal_slowdown,clocks_throttle_reasons.hw_power_brake_slowdown,clocks_throttle_reasons.sw_thermal_slowdown,utilization.gpu"
echo "== link query, raw"; nvidia-smi --query-gpu=$L --format=csv,noheader,nounits | tee "$OUT/link.txt"
echo "== remap query, raw"; nvidia-smi --query-remapped-rows=gpu_bus_id,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure --format=csv,noheader,nounits | tee "$OUT/remap.txt"
echo "== tools"; for t in lspci lshw dmidecode nvcc g++ make; do printf '%s: %s\n' $t "$(command -v $t || echo missing)"; done
echo "== build gpu_burn"
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
CUDA=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
H=$(find "$CUDA" /usr/local /opt /usr/include -name cublas_v2.h 2>/dev/null | head -1)
L=$(find "$CUDA" /usr/local /opt /usr/lib -name 'libcublas.so*' 2>/dev/null | head -1)
S=$(find "$CUDA" /usr/local /usr/lib /usr/lib64 -name 'libcuda.so*' 2>/dev/null | head -1)
echo "nvcc=$NVCC cuda=$CUDA cublas_h=$H cublas=$L libcuda=$S"
mkdir -p /tmp/burn/bin && cp "$G"/gpu-burn/* /tmp/burn/ && cd /tmp/burn
# Link-time names for the versioned libraries, where the toolkit lacks them.
LD=$(dirname "$L"); [ -e "$LD/libcublas.so" ] || ln -sf "$L" /tmp/burn/bin/libcublas.so
SD=$(dirname "$S"); [ -e "$SD/libcuda.so" ] || ln -sf "$S" /tmp/burn/bin/libcuda.so
"$NVCC" -I"$CUDA/include" -arch=compute_90 -ptx compare.cu -o compare.ptx && \
g++ -O3 -Wno-unused-result -I"$CUDA/include" -I"$(dirname "$H")" -c gpu_burn-drv.cpp && \
g++ -o gpu_burn gpu_burn-drv.o -O3 -L/tmp/burn/bin -L"$SD" -L"$CUDA/lib64" -L"$LD" -Wl,-rpath="$LD" -Wl,-rpath="$CUDA/lib64" -lcuda -lcublas -lcudart
echo "build rc=$? after $(( $(date +%s) - t0 ))s"; ls -la /tmp/burn/gpu_burn /tmp/burn/compare.ptx
cd /tmp
echo "== kiln offline run"
export PATH=/tmp/burn:$PATH
KC="$G/bin/kiln-coordinator --state /tmp/kstate"; KA=$G/bin/kiln-agent
$KC init >/dev/null
MAC=$(for i in /sys/class/net/*; do [ "$(basename $i)" = lo ] || cat $i/address; done | grep -v '^00:00:00:00:00:00$' | sort | head -1)
$KC host add dev --mac "$MAC"

RUN=$($KC ticket issue --plan "$HERE/plan.toml" --host dev); echo "run $RUN"
$KA run --ticket /tmp/kstate/runs/$RUN/ticket.kiln --trust /tmp/kstate/key/coordinator.pub --out /tmp/out.kiln --work /tmp/work
echo "agent rc=$? after $(( $(date +%s) - t0 ))s"
$KC import /tmp/out.kiln; echo "import rc=$?"
$KC run show $RUN --json > "$OUT/show.json"; $KC run show $RUN
$KC run logs $RUN > "$OUT/logs.txt"; echo "log lines: $(wc -l < "$OUT/logs.txt")"
$KC report $RUN --format json > "$OUT/report.json"
echo "== done after $(( $(date +%s) - t0 ))s"
