{
  description = "kci-build: reproducible, content-addressed builds of KernelCI's toolchain images";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachSystem [ "x86_64-linux" "aarch64-linux" ] (system:
      let
        pkgs = import nixpkgs { inherit system; };
        # Tools kci-build drives at run time.
        runtimeTools = [ pkgs.mmdebstrap pkgs.docker-client ];
      in
      {
        packages.default = pkgs.rustPlatform.buildRustPackage {
          pname = "kci-build";
          version = "0.1.0";
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          nativeBuildInputs = [ pkgs.makeWrapper ];
          # The integration tests need a Docker daemon; run them with `.ci/run`.
          doCheck = false;
          postInstall = ''
            wrapProgram $out/bin/kci-build --prefix PATH : ${pkgs.lib.makeBinPath runtimeTools}
          '';
          meta = {
            description = "Reproducible, content-addressed builds of KernelCI's images";
            mainProgram = "kci-build";
          };
        };

        devShells.default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.busybox
            pkgs.hyperfine
          ] ++ runtimeTools;
        };
      });
}
