# Thin aliases for the real commands, for users of the original project's Makefile.
# ./run.sh and ./stop.sh stay the primary interface; each target here only calls one.
#   make install [PREFIX=/usr/local] [DESTDIR=]   the herd binary, stripped, in PREFIX/bin
#   make run | stop | status | test | bench | clean

PREFIX ?= /usr/local
BINDIR := $(DESTDIR)$(PREFIX)/bin
CARGO ?= cargo
STRIP ?= strip

.PHONY: all build install run stop status test bench clean

all: build

build:
	$(CARGO) build --release --bin herd

# target/release/herd keeps line tables for profiling (Cargo.toml's [profile.release]);
# the installed copy is stripped: about 4 MB instead of 29.
install: build
	install -d "$(BINDIR)"
	install -m 0755 target/release/herd "$(BINDIR)/herd"
	$(STRIP) "$(BINDIR)/herd"

run:
	./run.sh

stop:
	./stop.sh

status: build
	target/release/herd status

test:
	$(CARGO) test

bench:
	bench/run.sh

clean:
	./stop.sh
	$(CARGO) clean
	rm -rf run logs state
