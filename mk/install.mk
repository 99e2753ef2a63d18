# Packaging for C and C++ users: `make install`, `make uninstall`, and `make test-install` (part of
# `make test`). What is installed (all paths under $(DESTDIR)):
#   $(LIBDIR)/libturboquant.so.X.Y.Z (soname libturboquant.so.X, set by build.rs)
#   $(LIBDIR)/libturboquant.so.X -> libturboquant.so.X.Y.Z, $(LIBDIR)/libturboquant.so -> libturboquant.so.X
#   $(INCLUDEDIR)/turboquant.h
#   $(DATADIR)/doc/turboquant/LICENSE (the Apache-2.0 text)
#   $(LIBDIR)/pkgconfig/turboquant.pc
#   $(LIBDIR)/cmake/turboquant/turboquantConfig.cmake, turboquantConfigVersion.cmake (turboquant::turboquant)
#   $(DATADIR)/turboquant/install-manifest.txt: what install wrote, which `make uninstall` removes exactly
# The work is done by packaging/install.sh; the templates are in packaging/.

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DATADIR ?= $(PREFIX)/share
# The library that `make build` produced.
TQ_LIBRARY ?= $(or $(CARGO_TARGET_DIR),target)/release/libturboquant.so

# The version, read from the [package] table of Cargo.toml: the one place it is written by hand.
# (A pre-release or build suffix, as in 1.2.3-rc.1, is dropped from the file names.)
TQ_VERSION := $(shell awk -F'"' '/^\[/ { in_package = ($$0 == "[package]") } \
	in_package && /^version[ \t]*=/ { print $$2; exit }' Cargo.toml)
tq_version_parts := $(subst ., ,$(firstword $(subst -, ,$(subst +, ,$(TQ_VERSION)))))
TQ_VERSION_MAJOR := $(word 1,$(tq_version_parts))
TQ_VERSION_MINOR := $(word 2,$(tq_version_parts))
TQ_VERSION_PATCH := $(word 3,$(tq_version_parts))

tq_install_env = PREFIX='$(PREFIX)' LIBDIR='$(LIBDIR)' INCLUDEDIR='$(INCLUDEDIR)' DATADIR='$(DATADIR)' \
	DESTDIR='$(DESTDIR)' VERSION_MAJOR='$(TQ_VERSION_MAJOR)' VERSION_MINOR='$(TQ_VERSION_MINOR)' \
	VERSION_PATCH='$(TQ_VERSION_PATCH)' LIBRARY='$(TQ_LIBRARY)' HEADER=include/turboquant.h LICENSE=LICENSE TEMPLATES=packaging

.PHONY: install uninstall test-install print-version

# Builds first unless NO_BUILD=1 (for `sudo make install NO_BUILD=1` after a `make build` as yourself).
install: $(if $(NO_BUILD),,build)
	$(tq_install_env) bash packaging/install.sh install

uninstall:
	$(tq_install_env) bash packaging/install.sh uninstall

print-version:
	@echo $(TQ_VERSION_MAJOR).$(TQ_VERSION_MINOR).$(TQ_VERSION_PATCH)

test: test-install

# Installs into temporary prefixes (plain and with DESTDIR), builds examples/cmake-consumer against
# them with CMake and with pkg-config, runs both, uninstalls and checks nothing is left. CMake comes from
# the tools venv (mk/tools.mk); pkg-config, when missing, from Debian as root, else PyPI.
test-install: build $(TOOLS_STAMP)
	MAKE='$(MAKE)' bash packaging/test-install.sh
