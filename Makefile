# Builds and installs refreshd (docs/install.md).
#
#   make                                   # release binaries, the release agent, man pages, completions
#   sudo make install                      # installs what `make` built; builds nothing
#   make install DESTDIR=/tmp/pkg          # into a staging tree (confine-hook keeps your ownership)
#   sudo make uninstall                    # removes exactly what install put in place
#   make PROFILE=debug && make install PROFILE=debug DESTDIR=...   # the debug build, quickly
#
# Variables: PREFIX (/usr), DESTDIR (empty), PROFILE (release; debug, or any cargo profile),
# TARGET_DIR ($CARGO_TARGET_DIR or target), ASSETS (TARGET_DIR/assets), CARGO (cargo).

PREFIX ?= /usr
DESTDIR ?=
PROFILE ?= release
CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
ASSETS ?= $(TARGET_DIR)/assets

# cargo calls the profile whose output is in target/debug "dev".
CARGO_PROFILE := $(if $(filter debug,$(PROFILE)),dev,$(PROFILE))
BUILT := $(TARGET_DIR)/$(PROFILE)
# A release installs the release agent of the size profile ([profile.agent] in Cargo.toml:
# no_std, a few KiB, run by the kernel for every emptied cgroup); other profiles their own.
AGENT := $(if $(filter release,$(PROFILE)),$(TARGET_DIR)/agent,$(BUILT))/refresh-release-agent
BUILD_HINT := make$(if $(filter release,$(PROFILE)),, PROFILE=$(PROFILE))

BINDIR := $(PREFIX)/bin
LIBDIR := $(PREFIX)/lib/refreshd
# Not under PREFIX: confine-hook derives the root from its own path, which must be
# ROOT/usr/lib/refreshd/confine-hook (docs/runctl-protocol.md).
HOOKDIR := /usr/lib/refreshd
UNITDIR := $(PREFIX)/lib/systemd/system
TMPFILESDIR := $(PREFIX)/lib/tmpfiles.d
MANDIR := $(PREFIX)/share/man
BASHDIR := $(PREFIX)/share/bash-completion/completions
ZSHDIR := $(PREFIX)/share/zsh/vendor-completions
FISHDIR := $(PREFIX)/share/fish/vendor_completions.d

UNITS := $(wildcard systemd/*.service systemd/*.socket)
TMPFILES := $(wildcard systemd/refreshd.tmpfiles)

# Everything install needs; checked before anything is installed.
REQUIRED := $(BUILT)/refreshctl $(BUILT)/refreshd $(BUILT)/confine-hook $(AGENT) \
	$(ASSETS)/man/refreshctl.1 $(ASSETS)/man/refreshd.8 \
	$(ASSETS)/completions/refreshctl.bash $(ASSETS)/completions/_refreshctl \
	$(ASSETS)/completions/refreshctl.fish

.PHONY: all build assets install uninstall

all: build
	$(BUILT)/xtask assets $(ASSETS)

build:
	$(CARGO) build --profile $(CARGO_PROFILE) --target-dir $(TARGET_DIR) --workspace --bins
	$(if $(filter release,$(PROFILE)),$(CARGO) build --profile agent --target-dir $(TARGET_DIR) -p refresh-release-agent --bin refresh-release-agent)

# Man pages and completions from the built xtask (which `make build` builds).
assets:
	$(if $(wildcard $(BUILT)/xtask),,$(error $(BUILT)/xtask is not built: run `$(BUILD_HINT)` first))
	$(BUILT)/xtask assets $(ASSETS)

# Only root can give confine-hook to root; a staging tree (DESTDIR) built as a user cannot.
OWNER := $(if $(filter 0,$(shell id -u)),-o root -g root)
MISSING = $(strip $(foreach f,$(REQUIRED),$(if $(wildcard $(f)),,$(f))))

install:
	$(if $(MISSING),$(error not built: $(MISSING); run `$(BUILD_HINT)` first (make install builds nothing)))
	install -D -m 0755 $(BUILT)/refreshctl "$(DESTDIR)$(BINDIR)/refreshctl"
	install -D -m 0755 $(BUILT)/refreshd "$(DESTDIR)$(LIBDIR)/refreshd"
	install -D -m 0755 $(AGENT) "$(DESTDIR)$(LIBDIR)/refresh-release-agent"
	$(if $(wildcard $(BUILT)/refreshd-notify),install -D -m 0755 $(BUILT)/refreshd-notify "$(DESTDIR)$(LIBDIR)/refreshd-notify")
	install -D -m 04755 $(OWNER) $(BUILT)/confine-hook "$(DESTDIR)$(HOOKDIR)/confine-hook"
	$(if $(OWNER),,@echo "make install: not root, so $(DESTDIR)$(HOOKDIR)/confine-hook is setuid $$(id -un), not root: chown it to root:root (mode 04755) before use")
	for u in $(UNITS); do install -D -m 0644 "$$u" "$(DESTDIR)$(UNITDIR)/$${u##*/}" || exit 1; done
	$(if $(filter /usr,$(PREFIX)),,for u in $(notdir $(UNITS)); do sed -i -e 's|/usr/lib/refreshd/refreshd|$(LIBDIR)/refreshd|g' -e 's|/usr/bin/refreshctl|$(BINDIR)/refreshctl|g' "$(DESTDIR)$(UNITDIR)/$$u" || exit 1; done)
	$(if $(TMPFILES),install -D -m 0644 $(TMPFILES) "$(DESTDIR)$(TMPFILESDIR)/refreshd.conf")
	install -d -m 0755 "$(DESTDIR)$(MANDIR)/man1" "$(DESTDIR)$(MANDIR)/man8"
	for p in $(ASSETS)/man/*.1 $(ASSETS)/man/*.8; do \
		d="$(DESTDIR)$(MANDIR)/man$${p##*.}/$${p##*/}.gz"; \
		gzip -9 -n -c "$$p" > "$$d" && chmod 0644 "$$d" || exit 1; \
	done
	install -D -m 0644 $(ASSETS)/completions/refreshctl.bash "$(DESTDIR)$(BASHDIR)/refreshctl"
	install -D -m 0644 $(ASSETS)/completions/_refreshctl "$(DESTDIR)$(ZSHDIR)/_refreshctl"
	install -D -m 0644 $(ASSETS)/completions/refreshctl.fish "$(DESTDIR)$(FISHDIR)/refreshctl.fish"

# Needs no build: the names are fixed, the man pages are refreshctl*, refreshd.8.
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/refreshctl" \
		"$(DESTDIR)$(LIBDIR)/refreshd" "$(DESTDIR)$(LIBDIR)/refresh-release-agent" \
		"$(DESTDIR)$(LIBDIR)/refreshd-notify" "$(DESTDIR)$(HOOKDIR)/confine-hook" \
		$(foreach u,$(UNITS),"$(DESTDIR)$(UNITDIR)/$(notdir $(u))") \
		"$(DESTDIR)$(TMPFILESDIR)/refreshd.conf" \
		"$(DESTDIR)$(MANDIR)/man1/refreshctl.1.gz" "$(DESTDIR)$(MANDIR)"/man1/refreshctl-*.1.gz \
		"$(DESTDIR)$(MANDIR)/man8/refreshd.8.gz" \
		"$(DESTDIR)$(BASHDIR)/refreshctl" "$(DESTDIR)$(ZSHDIR)/_refreshctl" \
		"$(DESTDIR)$(FISHDIR)/refreshctl.fish"
	rmdir --ignore-fail-on-non-empty "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(HOOKDIR)" 2>/dev/null || true
