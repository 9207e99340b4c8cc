#!/usr/bin/env bash
# EFA for NCCL inside a container: libfabric with the efa provider and rdma-core (the EFA installer,
# without its kernel module: the host's AMI has that) and the aws-ofi-nccl plugin, which NCCL loads as
# libnccl-net.so to run its inter-node traffic over EFA instead of TCP sockets.
#
#   cluster/Dockerfile                 RUN bash cluster/install_efa.sh           (KubeRay on EKS, or the launcher's image)
#   cluster/aws-gpu.yaml               worker_setup_commands, on the stock Ray image
#
# Versions: EFA_INSTALLER_VERSION and AWS_OFI_NCCL_VERSION from the environment (defaults below);
# take newer releases from https://efa-installer.amazonaws.com and github.com/aws/aws-ofi-nccl/releases.
# Idempotent: a second run finds the plugin and stops. Needs root (sudo is used when not root).
set -euo pipefail

EFA_INSTALLER_VERSION="${EFA_INSTALLER_VERSION:-1.38.0}"
AWS_OFI_NCCL_VERSION="${AWS_OFI_NCCL_VERSION:-1.12.1-aws}"
PLUGIN_PREFIX=/opt/amazon/ofi-nccl
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=EFA_INSTALLER_VERSION,AWS_OFI_NCCL_VERSION,CUDA_HOME bash "$0" "$@"
fi
if [ -e "$PLUGIN_PREFIX/lib/libnccl-net.so" ] && [ -e /opt/amazon/efa/lib/libfabric.so ]; then
  echo "install_efa: EFA and aws-ofi-nccl already installed"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl build-essential autoconf automake libtool \
  libhwloc-dev pciutils >/dev/null

# libfabric (efa provider) and rdma-core under /opt/amazon/efa; no kernel module, no limits.conf, no
# device check: the container sees the host's EFA devices at run time (/dev/infiniband).
curl -fsSL "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" | tar -xz -C "$work"
(cd "$work/aws-efa-installer" && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify)

# The NCCL plugin, built against that libfabric and CUDA's headers (the Ray GPU images carry them).
curl -fsSL "https://github.com/aws/aws-ofi-nccl/releases/download/v${AWS_OFI_NCCL_VERSION}/aws-ofi-nccl-${AWS_OFI_NCCL_VERSION}.tar.gz" \
  | tar -xz -C "$work"
(
  cd "$work/aws-ofi-nccl-${AWS_OFI_NCCL_VERSION}"
  ./configure --prefix="$PLUGIN_PREFIX" --with-libfabric=/opt/amazon/efa --with-cuda="$CUDA_HOME" \
    --enable-platform-aws --disable-tests
  make -j"$(nproc)"
  make install
)
# NCCL dlopens "libnccl-net.so" unless NCCL_NET_PLUGIN names another; releases name the library
# libnccl-net.so or libnccl-net-ofi.so / libnccl-net-aws-ofi.so depending on the version.
if [ ! -e "$PLUGIN_PREFIX/lib/libnccl-net.so" ]; then
  plugin=$(ls "$PLUGIN_PREFIX"/lib/libnccl-net-*.so | head -n1)
  ln -s "$(basename "$plugin")" "$PLUGIN_PREFIX/lib/libnccl-net.so"
fi
# On the loader's path for every process (Ray workers do not inherit a shell's LD_LIBRARY_PATH).
printf '%s\n' "$PLUGIN_PREFIX/lib" /opt/amazon/efa/lib > /etc/ld.so.conf.d/000-efa-nccl.conf
ldconfig
echo "install_efa: EFA installer ${EFA_INSTALLER_VERSION}, aws-ofi-nccl ${AWS_OFI_NCCL_VERSION} in $PLUGIN_PREFIX"
