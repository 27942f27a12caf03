// Package podman holds the end-to-end test of ovl as containers-storage's
// mount_program under the real podman (Debian's podman, runc, conmon). It has
// no code of its own: everything is in its tests.
//
// TestPodman runs every scenario against three storage configurations of
// the overlay driver: mount_program = the ovl built from this checkout,
// mount_program = fuse-overlayfs, and no mount program (the kernel's
// overlayfs), each rootful and rootless (as the unprivileged test user, with
// subordinate id ranges). Subtests are named PROGRAM/MODE/SCENARIO, so
// `go test ./e2e/podman -run 'TestPodman/ovl/rootful/build'` runs one.
//
// The rules:
//   - A scenario's result is a set of views: listings of a tree (type, mode,
//     owner, size, link count, content hash, hard-link groups) computed inside
//     the container with busybox, plus what its commands printed. A scenario
//     passes when its views equal the reference run's, the kernel driver's.
//     For force_mask, which containers-storage allows only with a mount
//     program, the reference is the kernel driver on a store without the
//     mask (the mask must not change what the container sees), and the
//     differences from fuse-overlayfs are logged. A reference the filtered
//     run did not produce is computed on demand.
//   - ovl must match the reference. fuse-overlayfs runs for comparison
//     only: what it gets wrong is logged and shown as "differs" in the
//     table, not failed (its bugs are not ovl's to fix); it is still the
//     first program of the switch scenario.
//   - Hard links to files of an earlier layer are not made in build steps
//     or before a commit: with a mount program, containers-storage makes a
//     layer by comparing merged trees, which puts only the new name into it,
//     so no mount program can match the kernel driver there.
//   - Each store is private: its own storage.conf, containers.conf and
//     registries.conf (CONTAINERS_STORAGE_CONF, CONTAINERS_CONF,
//     CONTAINERS_REGISTRIES_CONF), graph root, run root, libpod tmp_dir,
//     network config dir, events log, TMPDIR, and for rootless runs HOME and
//     XDG_RUNTIME_DIR. No registry is used: the base image is a busybox-static
//     rootfs tar made by the test and imported; the others are built from it
//     with `podman build --network=none`. One store per program and mode is
//     reused by the scenarios that need no store of their own.
//   - Every podman command runs with a timeout in its own process group,
//     killed whole when the timeout passes.
//   - Cleanup runs even when a test fails: `podman system reset` per store,
//     then the daemons whose argv names the store's graph root (mount
//     programs, conmon), the container processes whose root is under it and
//     the rootless pause process are killed by pid, the mounts left under the
//     scratch dir are detached, and the cgroup dirs of the run removed.
//
// Under CI=true a missing podman, runc, conmon, fuse-overlayfs, busybox or
// newuidmap, or a store that cannot be set up, fails the test.
//
// Environment: OVL_PODMAN_PROGRAMS (e.g. "ovl,kernel") limits the programs
// the subtests run (references are still computed); OVL_PODMAN_OVL names an
// ovl binary to test instead of building ./cmd/ovl; OVL_PODMAN_DUMP names a
// dir where each run's views are written (SCENARIO-PROGRAM-MODE.txt).
package podman
