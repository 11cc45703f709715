# The non-VM checks: cargo tests, clippy and rustfmt, each a derivation.
{
  pkgs,
  kiln,
}:
{
  # kiln's unit tests (doCheck) as a check of their own.
  cargo-tests = kiln.overrideAttrs (_: {
    pname = "kiln-cargo-tests";
    doCheck = true;
  });

  clippy = kiln.overrideAttrs (old: {
    pname = "kiln-clippy";
    nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ pkgs.clippy ];
    buildPhase = ''
      runHook preBuild
      cargo clippy --workspace --all-targets --offline -- -D warnings
      runHook postBuild
    '';
    doCheck = false;
    installPhase = "touch $out";
  });

  fmt = pkgs.runCommand "kiln-fmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
    cd ${kiln.src}
    find . -name '*.rs' -print0 | xargs -0 rustfmt --check --edition 2024
    touch $out
  '';
}
