# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NATIVE := $(VENV)/.native
APT    := apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends
# Debian packages the test suite drives for real (browser, load balancer, monitoring).
TEST_DEBS := chromium nginx prometheus redis-server

.PHONY: run test bench cluster cluster-down clean apt-test

run: $(NATIVE)
	$(BIN)/scalechat serve

test: $(NATIVE) apt-test image-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(NATIVE)
	$(BIN)/python bench/fanout.py

# A local cluster: replicas behind nginx (room hash), Prometheus, sharing the Redis on 127.0.0.1:6379.
cluster: $(NATIVE) apt-test
	$(BIN)/scalechat cluster up --replicas $(or $(REPLICAS),2) $(CLUSTER_ARGS)

cluster-down: $(STAMP)
	$(BIN)/scalechat cluster down

# The root distribution (src/scalechat, the shared core) and one per service folder,
# as pyproject.toml's [tool.scalechat] members lists them; each editable install is a
# plain .pth entry. The C extensions are built by it: a change to them reinstalls.
MEMBERS := services/chat services/loadgen analysis operator

$(STAMP): pyproject.toml $(MEMBERS:%=%/pyproject.toml) $(wildcard services/loadgen/scalechat/loadgen/*.c)
	@command -v cc >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -q && $(APT) gcc libc6-dev) >/dev/null; } \
	  || echo "no C compiler: the load generator and the chat server's per-message modules run as plain Python, slower"
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=74.1"
	SCALECHAT_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[test]' $(MEMBERS:%=-e ./%)
	touch $(STAMP)

# The chat server's per-message modules and the core's frame parser run compiled (mypyc:
# setup.py, services/chat/setup.py), and a compiled module is imported instead of its
# source: an edit to one rebuilds them. (The install above leaves them plain, so a fresh
# checkout compiles them once, here.)
NATIVE_SOURCES := $(shell $(PYTHON) setup.py --sources) $(shell $(PYTHON) services/chat/setup.py --sources)
$(NATIVE): $(STAMP) setup.py services/chat/setup.py src/scalechat/native.py services/chat/scalechat/chat/native.py $(NATIVE_SOURCES)
	$(BIN)/pip install -q --no-deps -e . -e ./services/chat
	touch $(NATIVE)

# Installs missing Debian packages (needs root, as in CI); says what is missing otherwise.
apt-test:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && $(APT) $$missing) >/dev/null || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# The one image (docker/Dockerfile), built with podman; its base is made with
# mmdebstrap when podman lacks it, and an image of identical files is reused.
IMAGE_DEBS := podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs
.PHONY: image image-test image-tools

image: $(STAMP) image-tools
	$(BIN)/python docker/image.py build

# Builds the image and runs it for real: this checkout's code, the chart's
# limits and user, serve/load/operator. `make test` runs the same tests.
image-test: $(STAMP) image-tools
	$(BIN)/python docker/image.py build
	$(BIN)/python -m pytest tests/images tests/charts/test_image_contract.py $(PYTEST_ARGS)

# Installs podman for the image tests as root; otherwise says they are skipped.
# With recommends: buildah, a network stack (netavark) and catatonit come with them.
image-tools:
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q && apt-get -o DPkg::Lock::Timeout=600 install -y -q $(IMAGE_DEBS)) >/dev/null \
	    || { echo "apt-get install $(IMAGE_DEBS) failed"; exit 1; }; \
	else echo "skipped: the image tests (make image-test): podman is not installed and installing it needs root" \
	  "(sudo apt-get install $(IMAGE_DEBS))"; fi

clean:
	rm -rf $(VENV) build .pytest_cache
