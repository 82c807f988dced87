//! Boxes and labels drawn over the input image, one colour per label, like the original demo's
//! `visualize_all_bbox_together`: radiologists look at boxes, they don't read coordinates.

use crate::answer::BoundingBox;
use crate::image::Image;

/// Label colours, in order of first appearance (the demo's list also starts with pure red).
pub const PALETTE: [[u8; 3]; 16] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 128, 255],
    [255, 255, 0],
    [255, 0, 255],
    [0, 255, 255],
    [255, 128, 0],
    [128, 0, 255],
    [0, 255, 128],
    [255, 0, 128],
    [128, 255, 0],
    [0, 128, 128],
    [128, 128, 255],
    [255, 128, 128],
    [128, 64, 0],
    [255, 255, 255],
];

/// A 3x5 bitmap font (one row per byte, bit 2 = left column), enough for labels.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ' ' => [0; 5],
        _ => [6, 1, 2, 0, 2],
    }
}

/// An RGB canvas `width x height` (HWC bytes).
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0.max(0)..y1.min(self.h as i64) {
            for x in x0.max(0)..x1.min(self.w as i64) {
                self.put(x, y, c);
            }
        }
    }

    /// A rectangle outline whose `t`-pixel border lies inside `[x0, x1) x [y0, y1)`.
    fn outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, t: i64, c: [u8; 3]) {
        self.fill(x0, y0, x1, y0 + t, c);
        self.fill(x0, y1 - t, x1, y1, c);
        self.fill(x0, y0, x0 + t, y1, c);
        self.fill(x1 - t, y0, x1, y1, c);
    }

    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + i as i64 * 4 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        let px = gx + col * scale;
                        let py = y + row as i64 * scale;
                        self.fill(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }
}

/// Draws `boxes` over `image` (at its own size) and returns interleaved RGB bytes
/// `[height, width, 3]`. Boxes of the same label share a colour; labelled boxes get a tag with
/// the label above them (inside the image when the box touches the top edge).
pub fn draw_boxes(image: &Image, boxes: &[BoundingBox]) -> Vec<u8> {
    let (w, h) = (image.width(), image.height());
    let mut canvas = Canvas { w, h, rgb: image.to_rgb8() };
    let thickness = (w.max(h) as i64 / 250).max(2);
    let scale = (w.max(h) as i64 / 300).max(1) + 1;
    let mut labels: Vec<Option<&str>> = Vec::new();
    for b in boxes {
        let key = b.label.as_deref();
        let idx = labels.iter().position(|l| *l == key).unwrap_or_else(|| {
            labels.push(key);
            labels.len() - 1
        });
        let color = PALETTE[idx % PALETTE.len()];
        let [x0, y0, x1, y1] = b.pixels.map(|v| v.round() as i64);
        canvas.outline(x0, y0, x1.max(x0 + 2 * thickness), y1.max(y0 + 2 * thickness), thickness, color);
        if let Some(label) = key {
            let text_w = label.chars().count() as i64 * 4 * scale + scale;
            let text_h = 7 * scale;
            let ty = if y0 - text_h >= 0 { y0 - text_h } else { y0 + thickness };
            canvas.fill(x0, ty, x0 + text_w, ty + text_h, color);
            let ink = if u32::from(color[0]) + u32::from(color[1]) + u32::from(color[2]) > 400 {
                [0, 0, 0]
            } else {
                [255, 255, 255]
            };
            canvas.text(x0 + scale, ty + scale, label, scale, ink);
        }
    }
    canvas.rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Pixels;

    #[test]
    fn box_pixels_are_where_the_coordinates_say() {
        let image = Image::from_pixels(200, 100, Pixels::Gray8(vec![40; 200 * 100])).unwrap();
        let b = crate::answer::Answer::parse_boxes("{<10><20><50><60>}", 200, 100);
        let rgb = draw_boxes(&image, &b);
        let at = |x: usize, y: usize| [rgb[(y * 200 + x) * 3], rgb[(y * 200 + x) * 3 + 1], rgb[(y * 200 + x) * 3 + 2]];
        // Grid 10..50 x 20..60 on 200x100 px = x 20..100, y 20..60.
        assert_eq!(at(20, 40), PALETTE[0], "left edge");
        assert_eq!(at(99, 40), PALETTE[0], "right edge");
        assert_eq!(at(60, 20), PALETTE[0], "top edge");
        assert_eq!(at(60, 59), PALETTE[0], "bottom edge");
        assert_eq!(at(60, 40), [40, 40, 40], "inside untouched");
        assert_eq!(at(10, 40), [40, 40, 40], "outside untouched");
        assert_eq!(at(60, 61), [40, 40, 40], "below untouched");
    }

    #[test]
    fn labels_get_distinct_colours_and_a_tag() {
        let image = Image::from_pixels(300, 300, Pixels::Gray8(vec![0; 300 * 300])).unwrap();
        let b = crate::answer::Answer::parse_boxes(
            "<p>lung</p> {<10><30><40><60>} <p>heart</p> {<50><30><90><60>}",
            300,
            300,
        );
        let rgb = draw_boxes(&image, &b);
        let at = |x: usize, y: usize| [rgb[(y * 300 + x) * 3], rgb[(y * 300 + x) * 3 + 1], rgb[(y * 300 + x) * 3 + 2]];
        assert_eq!(at(30, 120), PALETTE[0]);
        assert_eq!(at(150, 120), PALETTE[1]);
        // The tag sits just above the first box (y 90): filled with the label colour.
        assert!((75..90).any(|y| at(31, y) == PALETTE[0]));
    }
}
