################################################################################
#
# tinylet
#
################################################################################

# PLACEHOLDER: point TINYLET_SITE at the repository that publishes tinylet and
# TINYLET_VERSION at a release tag (then fill in tinylet.hash). To build from a
# local checkout instead, put in the build's local.mk (BR2_PACKAGE_OVERRIDE_FILE):
#   TINYLET_OVERRIDE_SRCDIR = /path/to/tinylet
# (see buildroot/README.md: cargo's dependencies must then be fetched first).
TINYLET_VERSION = v0.1.0
TINYLET_SITE = https://github.com/EXAMPLE/tinylet.git
TINYLET_SITE_METHOD = git
TINYLET_LICENSE = Apache-2.0
TINYLET_DEPENDENCIES = runc

# Buildroot's cargo infrastructure sets opt-level, LTO and codegen-units for
# every crate from BR2_OPTIMIZE_* / BR2_ENABLE_LTO; restore tinylet's release
# profile (Cargo.toml: built for size), which is what its size figures assume.
# Variables set here come after the infrastructure's, so they win.
TINYLET_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL="z" \
	CARGO_PROFILE_RELEASE_LTO="true" \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS="1"

# tinylet's own .cargo/config.toml names Debian's cross compiler as the C
# compiler of the musl targets (for ring); a build from TINYLET_OVERRIDE_SRCDIR
# keeps that file, so name Buildroot's compiler for the target explicitly (the
# environment takes precedence over the file's [env]).
TINYLET_CARGO_ENV += \
	CC_$(subst -,_,$(RUSTC_TARGET_NAME))="$(TARGET_CC)"

# A local checkout's build outputs are not sources.
TINYLET_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude /target --exclude /cross

# The infrastructure's install step (cargo install --root $(TARGET_DIR)/usr)
# puts the binary in /usr/bin/tinylet; the configuration comes with it.
define TINYLET_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/init/config.yaml \
		$(TARGET_DIR)/etc/tinylet/config.yaml
	$(INSTALL) -d -m 0755 $(TARGET_DIR)/etc/tinylet/manifests
endef
TINYLET_POST_INSTALL_TARGET_HOOKS += TINYLET_INSTALL_CONFIG

define TINYLET_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(@D)/init/sysv/S90tinylet \
		$(TARGET_DIR)/etc/init.d/S90tinylet
endef

define TINYLET_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/init/systemd/tinylet.service \
		$(TARGET_DIR)/usr/lib/systemd/system/tinylet.service
endef

$(eval $(cargo-package))
