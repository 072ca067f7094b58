//! OCI image archives built without Docker, for `ctr -n k8s.io images import`
//! on a node that can reach no registry.
//!
//! One uncompressed layer (containerd 1.6 accepts
//! `application/vnd.oci.image.layer.v1.tar`, and skipping gzip spares a
//! compressor), the config, the manifest and an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) in one tar. The tars are
//! written by the `tar` crate and the JSON documents are `oci-spec` types; what
//! is chosen here is what makes the output byte-for-byte reproducible (mtime 0,
//! owner 0:0, sorted entries, sorted JSON keys), so unchanged inputs give an
//! unchanged image digest.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::{Component, Path, PathBuf},
    process::Command,
    str::FromStr,
};

use oci_spec::{
    OciSpecError,
    image::{
        ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, DigestAlgorithm, HistoryBuilder,
        ImageConfiguration, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder, ImageManifest,
        ImageManifestBuilder, MediaType, OciLayout, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
        SCHEMA_VERSION, Sha256Digest,
    },
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// `ctr images import` names an image after this annotation, verbatim.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI layout's own tag, for tools like `umoci --image dir:TAG`.
pub const OCI_REF_NAME: &str = ANNOTATION_REF_NAME;
/// Every timestamp in the image, for reproducibility (as ko and rules_oci do).
pub const EPOCH: &str = "1970-01-01T00:00:00Z";
/// Docker's default, which distroless images set too.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("image name {name:?}: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("--add {0:?}: expected SOURCE:/absolute/destination")]
    Add(String),
    #[error("path {path:?} cannot be stored in a ustar header: {source}")]
    UstarPath { path: String, source: std::io::Error },
    #[error("writing the archive: {0}")]
    Tar(std::io::Error),
    #[error("ldd {}: {message}", binary.display())]
    Ldd { binary: PathBuf, message: String },
    #[error("invalid archive: {0}")]
    Invalid(String),
}

type Result<T, E = OciError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io { path: path.to_path_buf(), source }
}

/// The runtime half of an image: what the Dockerfile's `USER`, `ENV`,
/// `EXPOSE` and `ENTRYPOINT` say.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub user: Option<String>,
    /// `K=V`; a `PATH` here replaces [`DEFAULT_PATH`].
    pub env: Vec<String>,
    /// `8080` (tcp) or `8080/udp`.
    pub exposed_ports: Vec<String>,
}

/// The tag of a fully qualified `registry/repository:tag` name.
///
/// The kubelet asks the CRI for `ferry/operator:dev`, which containerd
/// normalises to `docker.io/ferry/operator:dev`; a short name imported as is
/// would never match, so it is refused rather than silently unusable.
pub fn image_tag(name: &str) -> Result<&str> {
    let refuse = |reason| OciError::Name { name: name.to_string(), reason };
    let (first, _) =
        name.split_once('/').ok_or_else(|| refuse("needs a registry, e.g. docker.io/ferry/operator:dev"))?;
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(refuse("the first component is not a registry (write docker.io/...)"));
    }
    if name.contains('@') {
        return Err(refuse("digest references cannot be imported by name"));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => Ok(tag),
        _ => Err(refuse("needs a tag, e.g. :dev")),
    }
}

/// `SOURCE:/DESTINATION` from the command line.
pub fn parse_add(spec: &str) -> Result<(PathBuf, String)> {
    match spec.rsplit_once(':') {
        Some((source, dest)) if !source.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(source), dest.to_string()))
        }
        _ => Err(OciError::Add(spec.to_string())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// The image's single filesystem layer, keyed by path without the leading `/`
/// so that a `BTreeMap` walk puts every directory before its contents.
#[derive(Debug, Clone)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// A layer holding only `/tmp` (1777, as in distroless): an empty base
    /// has none, and temporary files expect one.
    pub fn new() -> Self {
        let mut layer = Self { entries: BTreeMap::new() };
        layer.entries.insert("tmp".to_string(), Entry::Dir { mode: 0o1777 });
        layer
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    fn insert(&mut self, image_path: &str, entry: Entry) {
        let key = image_path.trim_start_matches('/').to_string();
        for (slash, _) in key.match_indices('/') {
            self.entries.entry(key[..slash].to_string()).or_insert(Entry::Dir { mode: 0o755 });
        }
        self.entries.insert(key, entry);
    }

    pub fn add_file(&mut self, image_path: &str, mode: u32, data: Vec<u8>) {
        self.insert(image_path, Entry::File { mode, data });
    }

    pub fn add_symlink(&mut self, image_path: &str, target: &str) {
        self.insert(image_path, Entry::Symlink { target: target.to_string() });
    }

    /// Copies a host file, following symlinks: the image gets the content,
    /// with the mode bits of the file the link points at.
    pub fn add_host_file(&mut self, source: &Path, image_path: &str) -> Result<()> {
        let data = std::fs::read(source).map_err(io_error(source))?;
        let metadata = std::fs::metadata(source).map_err(io_error(source))?;
        self.add_file(image_path, unix_mode(&metadata), data);
        Ok(())
    }

    /// Adds the shared libraries `ldd` resolves for `binary`, each at the path
    /// the dynamic loader will look for it (the one `ldd` printed). Without
    /// this a glibc binary on an empty base fails with a bare "no such file",
    /// the loader itself being missing. A non-ELF file or a static binary
    /// adds nothing.
    pub fn add_shared_libs(&mut self, binary: &Path) -> Result<()> {
        let mut magic = [0u8; 4];
        std::fs::File::open(binary)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .map_err(io_error(binary))?;
        if &magic != b"\x7fELF" {
            return Ok(());
        }
        let output = Command::new("ldd").arg(binary).output().map_err(io_error(Path::new("ldd")))?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let ldd_error = |message: String| OciError::Ldd { binary: binary.to_path_buf(), message };
        let libraries = parse_ldd(&text).map_err(ldd_error)?;
        // ldd exits 1 for a static binary, which parse_ldd already accepted.
        if !output.status.success() && !libraries.is_empty() {
            return Err(ldd_error(text));
        }
        for library in libraries {
            self.add_host_file(&library, &library.to_string_lossy())?;
            // The loader is reached as /lib64/ld-linux-x86-64.so.2, a link to
            // /lib/x86_64-linux-gnu/...; link that name back too, for
            // anything that names it the other way.
            if let Ok(target) = std::fs::read_link(&library) {
                let absolute = lexical_join(library.parent().unwrap_or(Path::new("/")), &target);
                let key = absolute.to_string_lossy();
                if absolute != library && !self.entries.contains_key(key.trim_start_matches('/')) {
                    self.add_symlink(&key, &library.to_string_lossy());
                }
            }
        }
        Ok(())
    }

    /// The layer as an uncompressed tar.
    pub fn to_tar(&self) -> Result<Vec<u8>> {
        let mut tar = TarWriter::new();
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => tar.dir(&format!("{path}/"), *mode)?,
                Entry::File { mode, data } => tar.file(path, *mode, data)?,
                Entry::Symlink { target } => tar.symlink(path, target)?,
            }
        }
        tar.finish()
    }
}

fn unix_mode(metadata: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o7777
}

/// `base/target` with `.` and `..` resolved on the names alone: the link's
/// target must be named as the image will see it, not as the host resolves
/// it (`/lib` is itself a link on merged-/usr hosts).
fn lexical_join(base: &Path, target: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in base.join(target).components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The absolute library paths in `ldd` output. `linux-vdso.so.1` has no file;
/// "not a dynamic executable" and "statically linked" mean there is nothing
/// to add; `=> not found` is an error, as the image would not start.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    if output.contains("not a dynamic executable") || output.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest
            }
            None => line,
        };
        let path = resolved.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        } else if !path.is_empty() && !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    Ok(libraries)
}

/// A `sha256:…` digest of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// An OCI content descriptor for `data`.
fn descriptor(media_type: MediaType, data: &[u8]) -> Result<Descriptor> {
    let hex = format!("{:x}", Sha256::digest(data));
    let digest = Sha256Digest::from_str(&hex).map_err(spec_error("digest"))?;
    Ok(Descriptor::new(media_type, data.len() as u64, digest))
}

fn spec_error(what: &'static str) -> impl Fn(OciSpecError) -> OciError {
    move |e| OciError::Invalid(format!("{what}: {e}"))
}

/// The image config blob (its `config` object is Docker's runtime config).
pub fn image_configuration(config: &ImageConfig, layer_tar: &[u8]) -> Result<ImageConfiguration> {
    let mut env = Vec::new();
    if !config.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    env.extend(config.env.iter().cloned());
    let ports: Vec<String> = config
        .exposed_ports
        .iter()
        .map(|p| if p.contains('/') { p.clone() } else { format!("{p}/tcp") })
        .collect();
    let mut runtime = ConfigBuilder::default().env(env).entrypoint(config.entrypoint.clone());
    if let Some(user) = &config.user {
        runtime = runtime.user(user.clone());
    }
    if !ports.is_empty() {
        runtime = runtime.exposed_ports(ports);
    }
    let rootfs = RootFsBuilder::default().typ("layers").diff_ids(vec![sha256(layer_tar)]);
    let history = HistoryBuilder::default().created(EPOCH).created_by("ferry-e2e oci_image");
    // The epoch, not the build time, so the digest depends on the inputs
    // alone; present at all because some readers (umoci 0.4 stat) crash
    // without it.
    ImageConfigurationBuilder::default()
        .created(EPOCH)
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(runtime.build().map_err(spec_error("config"))?)
        .rootfs(rootfs.build().map_err(spec_error("rootfs"))?)
        .history(vec![history.build().map_err(spec_error("history"))?])
        .build()
        .map_err(spec_error("image configuration"))
}

/// The whole OCI layout tar, naming the image once per entry of `names`
/// (all pointing at the same manifest).
pub fn build_archive(names: &[String], config: &ImageConfig, layer: &Layer) -> Result<Vec<u8>> {
    if names.is_empty() {
        return Err(OciError::Invalid("no image name".to_string()));
    }
    let layer_tar = layer.to_tar()?;
    let config_blob = to_json(&image_configuration(config, &layer_tar)?)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_blob)?)
        .layers(vec![descriptor(MediaType::ImageLayer, &layer_tar)?])
        .build()
        .map_err(spec_error("manifest"))?;
    let manifest = to_json(&manifest)?;
    let platform = PlatformBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .build()
        .map_err(spec_error("platform"))?;
    let mut manifests = Vec::new();
    for name in names {
        let mut entry = descriptor(MediaType::ImageManifest, &manifest)?;
        entry.set_annotations(Some(HashMap::from([
            (CONTAINERD_NAME.to_string(), name.clone()),
            (OCI_REF_NAME.to_string(), image_tag(name)?.to_string()),
        ])));
        entry.set_platform(Some(platform.clone()));
        manifests.push(entry);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec_error("index"))?;
    let index = to_json(&index)?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(spec_error("oci-layout"))?;

    let mut blobs = BTreeMap::new();
    for blob in [&layer_tar, &config_blob, &manifest] {
        blobs.insert(format!("{:x}", Sha256::digest(blob)), blob.as_slice());
    }
    let mut tar = TarWriter::new();
    tar.file("oci-layout", 0o644, &to_json(&layout)?)?;
    tar.file("index.json", 0o644, &index)?;
    tar.dir("blobs/", 0o755)?;
    tar.dir("blobs/sha256/", 0o755)?;
    for (hex, blob) in blobs {
        tar.file(&format!("blobs/sha256/{hex}"), 0o644, blob)?;
    }
    tar.finish()
}

/// Compact JSON with every object's keys sorted: oci-spec keeps annotations
/// and exposed ports in `HashMap`s, whose order changes from run to run, and
/// the bytes (hence the digests) must depend on the content alone.
fn to_json(document: &impl Serialize) -> Result<Vec<u8>> {
    let json_error = |e: serde_json::Error| OciError::Invalid(format!("JSON: {e}"));
    let mut value = serde_json::to_value(document).map_err(json_error)?;
    value.sort_all_objects();
    serde_json::to_vec(&value).map_err(json_error)
}

/// A `tar::Builder` whose every entry is owned by 0:0 at mtime 0, in ustar
/// headers (no GNU long names: a path that does not fit is an error).
struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
}

impl TarWriter {
    fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()) }
    }

    fn header(path: &str, kind: EntryType, mode: u32, size: usize) -> Result<Header> {
        let mut header = Header::new_ustar();
        header.set_path(path).map_err(|source| OciError::UstarPath { path: path.to_string(), source })?;
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size as u64);
        // Written as zeros in octal, as GNU tar and Go's archive/tar do.
        header.set_device_major(0).map_err(OciError::Tar)?;
        header.set_device_minor(0).map_err(OciError::Tar)?;
        Ok(header)
    }

    fn append(&mut self, mut header: Header, data: &[u8]) -> Result<()> {
        header.set_cksum();
        // The checksum as GNU tar and Go's archive/tar spell it (six digits,
        // NUL, space) rather than the crate's seven digits and NUL: the same
        // value, and the archives stay byte-for-byte those of the ustar
        // writer this replaced, so image digests did not change.
        let sum = header.cksum().map_err(OciError::Tar)?;
        header.as_old_mut().cksum.copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.builder.append(&header, data).map_err(OciError::Tar)
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let header = Self::header(path, EntryType::Regular, mode, data.len())?;
        self.append(header, data)
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let header = Self::header(path, EntryType::Directory, mode, 0)?;
        self.append(header, &[])
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut header = Self::header(path, EntryType::Symlink, 0o777, 0)?;
        header
            .set_link_name(target)
            .map_err(|source| OciError::UstarPath { path: target.to_string(), source })?;
        self.append(header, &[])
    }

    /// The archive, closed by its two zero blocks.
    fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().map_err(OciError::Tar)
    }
}

/// One entry read back from a tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// The ustar type flag: `b'0'` file, `b'2'` symlink, `b'5'` directory.
    pub kind: u8,
    pub link: String,
    pub data: Vec<u8>,
}

/// Reads a tar archive (checksums verified by the `tar` crate).
pub fn read_tar(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let invalid = |e: std::io::Error| OciError::Invalid(format!("tar: {e}"));
    let mut archive = tar::Archive::new(bytes);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let header = entry.header();
        let (mode, uid, gid, mtime) = (header.mode(), header.uid(), header.gid(), header.mtime());
        let kind = header.entry_type().as_byte();
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link =
            entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(invalid)?;
        entries.push(TarEntry {
            path,
            mode: mode.map_err(invalid)?,
            uid: uid.map_err(invalid)?,
            gid: gid.map_err(invalid)?,
            mtime: mtime.map_err(invalid)?,
            kind,
            link,
            data,
        });
    }
    Ok(entries)
}

/// What an archive holds, after checking that every descriptor's digest and
/// size match the blob it points at.
#[derive(Debug)]
pub struct Inspection {
    /// `io.containerd.image.name` of each index entry.
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub config: ImageConfiguration,
    pub layer: Vec<TarEntry>,
}

/// Parses an archive back: `oci-layout` → `index.json` → manifest → config and
/// layer, the way an importer walks it.
pub fn inspect_archive(archive: &[u8]) -> Result<Inspection> {
    let bad = |what: String| OciError::Invalid(what);
    let files: BTreeMap<String, Vec<u8>> =
        read_tar(archive)?.into_iter().filter(|e| e.kind == b'0').map(|e| (e.path, e.data)).collect();
    let file = |path: &str| files.get(path).ok_or_else(|| bad(format!("{path} missing")));
    let blob = |desc: &Descriptor, media_type: MediaType| -> Result<&Vec<u8>> {
        let digest = desc.digest();
        if desc.media_type() != &media_type {
            return Err(bad(format!("{digest}: media type is not {media_type}")));
        }
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(bad(format!("digest {digest}: not sha256")));
        }
        let data = files
            .get(&format!("blobs/sha256/{}", digest.digest()))
            .ok_or_else(|| bad(format!("blob {digest} missing")))?;
        if sha256(data) != digest.to_string() {
            return Err(bad(format!("blob {digest} has another digest")));
        }
        if desc.size() != data.len() as u64 {
            return Err(bad(format!("blob {digest}: size differs from descriptor")));
        }
        Ok(data)
    };

    let layout: OciLayout = parse_json("oci-layout", file("oci-layout")?)?;
    if layout.image_layout_version() != "1.0.0" {
        return Err(bad("oci-layout version".to_string()));
    }
    let index: ImageIndex = parse_json("index.json", file("index.json")?)?;
    let entries = index.manifests();
    let first = entries.first().ok_or_else(|| bad("index.json lists no manifest".to_string()))?;
    let mut names = Vec::new();
    for entry in entries {
        blob(entry, MediaType::ImageManifest)?;
        if entry.digest() != first.digest() {
            return Err(bad("index entries name different manifests".to_string()));
        }
        let annotations = entry.annotations().clone().unwrap_or_default();
        let name = annotations
            .get(CONTAINERD_NAME)
            .ok_or_else(|| bad(format!("index entry without {CONTAINERD_NAME}")))?;
        if annotations.get(OCI_REF_NAME).map(String::as_str) != Some(image_tag(name)?) {
            return Err(bad(format!("{OCI_REF_NAME} is not the tag of {name}")));
        }
        names.push(name.clone());
    }
    let manifest: ImageManifest = parse_json("manifest", blob(first, MediaType::ImageManifest)?)?;
    let config: ImageConfiguration = parse_json("config", blob(manifest.config(), MediaType::ImageConfig)?)?;
    let [layer_desc] = manifest.layers().as_slice() else {
        return Err(bad("expected exactly one layer".to_string()));
    };
    let layer_tar = blob(layer_desc, MediaType::ImageLayer)?;
    // Uncompressed, the layer's digest is its diff_id.
    if config.rootfs().diff_ids() != &[layer_desc.digest().to_string()] {
        return Err(bad("rootfs.diff_ids do not match the layer".to_string()));
    }
    Ok(Inspection { names, manifest_digest: first.digest().to_string(), config, layer: read_tar(layer_tar)? })
}

/// An OCI document, with serde_json's error (oci-spec's own readers drop it).
fn parse_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| OciError::Invalid(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn operator_like() -> (ImageConfig, Layer) {
        let config = ImageConfig {
            entrypoint: vec!["/usr/local/bin/operator".to_string()],
            user: Some("65532:65532".to_string()),
            env: vec!["DATA_DIR=/data".to_string()],
            exposed_ports: vec!["8080".to_string(), "53/udp".to_string()],
        };
        let mut layer = Layer::new();
        layer.add_file("/usr/local/bin/operator", 0o755, b"\x7fELF fake".to_vec());
        layer.add_file("/etc/passwd", 0o644, b"root:x:0:0::/root:/sbin/nologin\n".to_vec());
        (config, layer)
    }

    fn build(list: &[&str]) -> Vec<u8> {
        let (config, layer) = operator_like();
        build_archive(&names(list), &config, &layer).expect("archive")
    }

    #[test]
    fn an_image_archive_names_the_image_for_containerd() {
        let archive = build(&["docker.io/ferry/operator:dev"]);
        let index: Value = read_tar(&archive)
            .expect("tar")
            .into_iter()
            .find(|e| e.path == "index.json")
            .map(|e| serde_json::from_slice(&e.data).expect("json"))
            .expect("index.json");
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations[CONTAINERD_NAME], "docker.io/ferry/operator:dev");
        assert_eq!(annotations[OCI_REF_NAME], "dev");
        assert_eq!(index["manifests"][0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    }

    #[test]
    fn every_extra_name_points_at_the_same_manifest() {
        let archive = build(&["registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.6"]);
        let inspection = inspect_archive(&archive).expect("valid archive");
        assert_eq!(inspection.names, names(&["registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.6"]));
    }

    #[test]
    fn every_blob_matches_the_digest_and_size_its_descriptor_claims() {
        let archive = build(&["docker.io/ferry/operator:dev"]);
        let inspection = inspect_archive(&archive).expect("valid archive");
        assert!(inspection.manifest_digest.starts_with("sha256:"));
        let paths: Vec<_> = read_tar(&archive).expect("tar").into_iter().map(|e| e.path).collect();
        assert_eq!(&paths[..4], ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]);
        assert_eq!(paths.len(), 7, "layer, config and manifest blobs: {paths:?}");
    }

    #[test]
    fn a_tampered_blob_is_caught_by_the_inspection() {
        let mut archive = build(&["docker.io/ferry/operator:dev"]);
        let needle = b"fake";
        let at =
            archive.windows(needle.len()).position(|w| w == needle).expect("binary content in the layer");
        archive[at] = b'F';
        let error = inspect_archive(&archive).expect_err("digest mismatch");
        assert!(error.to_string().contains("another digest"), "{error}");
    }

    #[test]
    fn the_same_inputs_give_the_same_digest() {
        let first = build(&["docker.io/ferry/operator:dev"]);
        let second = build(&["docker.io/ferry/operator:dev"]);
        assert_eq!(sha256(&first), sha256(&second));
        let (config, mut layer) = operator_like();
        layer.add_file("/etc/extra", 0o644, Vec::new());
        let other =
            build_archive(&names(&["docker.io/ferry/operator:dev"]), &config, &layer).expect("archive");
        assert_ne!(sha256(&first), sha256(&other));
    }

    #[test]
    fn the_layer_owns_everything_by_root_at_time_zero_with_parents_first() {
        let inspection = inspect_archive(&build(&["docker.io/ferry/operator:dev"])).expect("valid");
        let summary: Vec<_> = inspection.layer.iter().map(|e| (e.path.as_str(), e.kind, e.mode)).collect();
        assert_eq!(
            summary,
            [
                ("etc/", b'5', 0o755),
                ("etc/passwd", b'0', 0o644),
                ("tmp/", b'5', 0o1777),
                ("usr/", b'5', 0o755),
                ("usr/local/", b'5', 0o755),
                ("usr/local/bin/", b'5', 0o755),
                ("usr/local/bin/operator", b'0', 0o755),
            ]
        );
        assert!(inspection.layer.iter().all(|e| e.uid == 0 && e.gid == 0 && e.mtime == 0));
    }

    #[test]
    fn the_config_carries_entrypoint_user_env_and_ports() {
        let config = inspect_archive(&build(&["docker.io/ferry/operator:dev"])).expect("valid").config;
        let config = serde_json::to_value(&config).expect("json");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        let runtime = &config["config"];
        assert_eq!(runtime["Entrypoint"], json!(["/usr/local/bin/operator"]));
        assert_eq!(runtime["User"], "65532:65532");
        assert_eq!(runtime["Env"], json!([DEFAULT_PATH, "DATA_DIR=/data"]));
        assert_eq!(runtime["ExposedPorts"], json!({"8080/tcp": {}, "53/udp": {}}));
        assert_eq!(config["created"], EPOCH, "a build time breaks reproducibility");
        assert_eq!(config["history"][0]["created"], EPOCH);
    }

    #[test]
    fn a_path_given_in_env_replaces_the_default_one() {
        let config = ImageConfig { env: vec!["PATH=/bin".to_string()], ..ImageConfig::default() };
        let json = serde_json::to_value(image_configuration(&config, b"").expect("config")).expect("json");
        assert_eq!(json["config"]["Env"], json!(["PATH=/bin"]));
        assert!(json["config"].get("User").is_none());
        assert!(json["config"].get("ExposedPorts").is_none());
    }

    #[test]
    fn names_the_kubelet_would_not_find_are_refused() {
        assert_eq!(image_tag("docker.io/ferry/operator:dev").expect("ok"), "dev");
        assert_eq!(image_tag("localhost:5000/pause:3.10").expect("ok"), "3.10");
        for name in [
            "ferry/operator:dev",
            "operator:dev",
            "docker.io/ferry/operator",
            "localhost:5000/pause",
            "docker.io/ferry/operator@sha256:00",
        ] {
            assert!(image_tag(name).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn an_add_needs_a_source_and_an_absolute_destination() {
        assert_eq!(
            parse_add("target/release/operator:/usr/local/bin/operator").expect("ok"),
            (PathBuf::from("target/release/operator"), "/usr/local/bin/operator".to_string())
        );
        assert!(parse_add("target/release/operator").is_err());
        assert!(parse_add("operator:usr/bin/operator").is_err());
        assert!(parse_add(":/x").is_err());
    }

    #[test]
    fn ldd_output_yields_the_libraries_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f49)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f49)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f49)\n";
        assert_eq!(
            parse_ldd(output).expect("parsed"),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_static_binary_needs_no_shared_library() {
        assert!(parse_ldd("\tnot a dynamic executable\n").expect("ok").is_empty());
        assert!(parse_ldd("\tstatically linked\n").expect("ok").is_empty());
    }

    #[test]
    fn a_library_ldd_cannot_find_is_an_error() {
        let error = parse_ldd("\tlibssl.so.3 => not found\n").expect_err("missing");
        assert!(error.contains("libssl.so.3"), "{error}");
    }

    #[test]
    fn a_dynamic_binary_brings_its_libraries_and_the_loader() {
        // This test binary itself is a dynamically linked glibc executable.
        let me = std::env::current_exe().expect("current exe");
        let mut layer = Layer::new();
        layer.add_shared_libs(&me).expect("ldd");
        let files: Vec<_> = layer
            .entries()
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File { .. }))
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(files.iter().any(|p| p.ends_with("/libc.so.6")), "{files:?}");
        assert!(files.iter().any(|p| p.contains("ld-linux")), "{files:?}");
    }

    #[test]
    fn a_file_that_is_not_elf_needs_no_ldd() {
        let mut layer = Layer::new();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        layer.add_shared_libs(&manifest).expect("no libraries");
        assert_eq!(layer.entries().len(), 1, "only /tmp");
    }

    #[test]
    fn long_paths_use_the_ustar_prefix() {
        let deep = format!("/{}/{}/file", "a".repeat(90), "b".repeat(90));
        let mut layer = Layer::new();
        layer.add_file(&deep, 0o644, b"x".to_vec());
        let read = read_tar(&layer.to_tar().expect("tar")).expect("read back");
        assert!(read.iter().any(|e| e.path == deep[1..]), "{read:?}");
        let mut too_deep = Layer::new();
        too_deep.add_file(&format!("/{}", "c".repeat(120)), 0o644, Vec::new());
        assert!(matches!(too_deep.to_tar(), Err(OciError::UstarPath { .. })));
    }

    #[test]
    fn rebuilding_the_same_inputs_gives_identical_bytes() {
        // Several names and ports: oci-spec keeps annotations and exposed
        // ports in HashMaps, whose order differs between instances.
        let (mut config, layer) = operator_like();
        config.exposed_ports.extend(["9090", "50051", "8443/tcp", "4000/udp"].map(String::from));
        let names =
            names(&["docker.io/ferry/operator:dev", "docker.io/ferry/operator:0.1.0", "localhost:5000/x:y"]);
        let first = build_archive(&names, &config, &layer).expect("archive");
        for _ in 0..16 {
            let again = build_archive(&names, &config, &layer).expect("archive");
            assert!(again == first, "two builds of the same inputs differ");
        }
    }

    #[test]
    fn the_archive_bytes_are_those_of_the_hand_written_ustar_writer() {
        // The digest the former hand-written ustar writer and serde_json
        // documents gave for these inputs: a change here changes every image
        // digest (a new `tar` or `oci-spec` release writing other bytes).
        let (config, layer) = operator_like();
        let archive =
            build_archive(&names(&["docker.io/ferry/operator:dev"]), &config, &layer).expect("archive");
        assert_eq!(
            sha256(&archive),
            "sha256:fac3ca44dd5751eef56ab221f65dd7161b9003412352fa538a3ec604ffe411f8"
        );
    }

    #[test]
    fn an_archive_we_write_is_read_back_by_the_tar_crate_with_its_entries_and_modes() {
        let mut layer = Layer::new();
        layer.add_file("/bin/tool", 0o750, b"#!/bin/true\n".to_vec());
        layer.add_symlink("/lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so");
        // Over 100 bytes: stored as ustar prefix and name, read back joined.
        let (a, b) = ("a".repeat(80), "b".repeat(80));
        layer.add_file(&format!("/{a}/{b}/file"), 0o600, b"deep".to_vec());
        let tar_bytes = layer.to_tar().expect("tar");
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let header = entry.header().clone();
            assert!(header.as_ustar().is_some(), "not a ustar header");
            assert_eq!((header.uid().expect("uid"), header.gid().expect("gid")), (0, 0));
            assert_eq!(header.mtime().expect("mtime"), 0);
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let link = entry.link_name().expect("link").map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            seen.push((path, header.entry_type(), header.mode().expect("mode"), link, data));
        }
        let dir = |path: &str, mode| (format!("{path}/"), EntryType::Directory, mode, None, Vec::new());
        assert_eq!(
            seen,
            [
                dir(&a, 0o755),
                dir(&format!("{a}/{b}"), 0o755),
                (format!("{a}/{b}/file"), EntryType::Regular, 0o600, None, b"deep".to_vec()),
                dir("bin", 0o755),
                ("bin/tool".to_string(), EntryType::Regular, 0o750, None, b"#!/bin/true\n".to_vec()),
                dir("lib64", 0o755),
                (
                    "lib64/ld.so".to_string(),
                    EntryType::Symlink,
                    0o777,
                    Some("/lib/x86_64-linux-gnu/ld.so".to_string()),
                    Vec::new()
                ),
                dir("tmp", 0o1777),
            ]
        );
    }

    #[test]
    fn a_host_symlink_lands_as_its_target_content_and_mode() {
        let dir = tempdir();
        let real = dir.join("real");
        std::fs::write(&real, b"content").expect("write");
        std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o750)).expect("chmod");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let mut layer = Layer::new();
        layer.add_host_file(&link, "/opt/thing").expect("add");
        assert_eq!(
            layer.entries().get("opt/thing"),
            Some(&Entry::File { mode: 0o750, data: b"content".to_vec() })
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn symlink_targets_are_resolved_on_names_alone() {
        assert_eq!(
            lexical_join(Path::new("/lib64"), Path::new("../lib/x/ld.so")),
            PathBuf::from("/lib/x/ld.so")
        );
        assert_eq!(
            lexical_join(Path::new("/lib64"), Path::new("/lib/x/ld.so")),
            PathBuf::from("/lib/x/ld.so")
        );
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-oci-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
