//! What several commands share for their output: files written atomically, images, text made
//! safe for a terminal, standard output that may close early, memory checks, progress bars.

use disa::image::RgbImage;
use disa::{DisaError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Images a request may hold before its memory is estimated at all.
pub const MAX_IMAGES: usize = 1 << 20;

/// The image types `generate --out` writes.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "ppm"];

/// Writes a file atomically (temporary file, flush, sync, rename), naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    disa::weights::write_atomic(path, bytes)
}

/// Writes a PNG, or a binary PPM when the name ends in `.ppm` (handy for scripts and tests).
pub fn write_image(path: &Path, img: &RgbImage) -> Result<()> {
    let io = |source: std::io::Error| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("ppm") => {
            let mut bytes = format!("P6\n{} {}\n255\n", img.width, img.height).into_bytes();
            bytes.extend_from_slice(&img.pixels);
            return write_file(path, &bytes);
        }
        Some("png") => {}
        _ => {
            return Err(DisaError::InvalidSetting(format!(
                "--out {}: unknown image type; accepted: .png, .ppm",
                path.display()
            )));
        }
    }
    // Encoded in memory (images are small), then written atomically.
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, img.width as u32, img.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| io(std::io::Error::other(e)))?;
    writer
        .write_image_data(&img.pixels)
        .map_err(|e| io(std::io::Error::other(e)))?;
    writer.finish().map_err(|e| io(std::io::Error::other(e)))?;
    write_file(path, &png_bytes)
}

/// Text from a file or the command line made safe for a terminal: control characters (escape
/// sequences) are shown escaped instead of being sent to it.
pub fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Refuses more than [`MAX_IMAGES`] images at once: the part of [`check_batch`] that needs no
/// model, so commands run it before loading one.
pub fn check_image_count(images: usize) -> Result<()> {
    if images > MAX_IMAGES {
        return Err(DisaError::InvalidSetting(format!(
            "{images} images at once is more than the {MAX_IMAGES} accepted: lower --batch"
        )));
    }
    Ok(())
}

/// Refuses `images` images of `config` (doubled rows with guidance) that would not fit in
/// memory, before anything is allocated for them.
pub fn check_batch(config: &disa::model::MarConfig, images: usize, cfg: f32) -> Result<()> {
    check_image_count(images)?;
    disa::weights::limits::check_fits(
        &format!("generating {images} images at once (lower --batch)"),
        disa::weights::limits::sampling_bytes(config, images as f64, cfg != 1.0),
    )
}

/// Writes to standard output; a closed one (`disa schedule | head -2`) ends the output
/// normally instead of failing.
pub fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DisaError::Io {
            path: "standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A closed standard output (`| head`) ends any command quietly with success: `println!`
/// panics on it, and this hook turns that one panic into a normal exit.
pub fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
}

/// A progress bar drawing `template` (indicatif's syntax), hidden when `hidden`.
pub fn progress_bar(len: u64, template: &str, hidden: bool) -> ProgressBar {
    let bar = if hidden {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
