//! Static files under `/static/`: the web app manifest, its icons and the vendored face
//! detector (face-api with TensorFlow.js and the tiny face detector's weights), for phones
//! whose browser has no `FaceDetector`. Everything is embedded in the binary, so a brain
//! serves its whole face offline; nothing is ever loaded from another origin.
//!
//! The files never change within one build, so they are cached for a day and revalidated
//! with an `ETag` made from their bytes, which changes exactly when a file does.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// One embedded file: its name under `/static/`, its bytes and its content type.
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

/// Every file under `/static/`. See face/README.md for where the vendored ones come from.
const ASSETS: &[Asset] = &[
    Asset {
        name: "manifest.webmanifest",
        bytes: include_bytes!("../../face/manifest.webmanifest"),
        content_type: "application/manifest+json",
    },
    Asset {
        name: "icon.svg",
        bytes: include_bytes!("../../face/icon.svg"),
        content_type: "image/svg+xml",
    },
    Asset {
        name: "icon-192.png",
        bytes: include_bytes!("../../face/icon-192.png"),
        content_type: "image/png",
    },
    Asset {
        name: "icon-512.png",
        bytes: include_bytes!("../../face/icon-512.png"),
        content_type: "image/png",
    },
    Asset {
        name: "capture-worklet.js",
        bytes: include_bytes!("../../face/capture-worklet.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "vendor/face-api.js",
        bytes: include_bytes!("../../face/vendor/face-api.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "vendor/tiny_face_detector_model-weights_manifest.json",
        bytes: include_bytes!("../../face/vendor/tiny_face_detector_model-weights_manifest.json"),
        content_type: "application/json",
    },
    Asset {
        name: "vendor/tiny_face_detector_model.bin",
        bytes: include_bytes!("../../face/vendor/tiny_face_detector_model.bin"),
        content_type: "application/octet-stream",
    },
    Asset {
        name: "vendor/LICENSE-face-api",
        bytes: include_bytes!("../../face/vendor/LICENSE-face-api"),
        content_type: "text/plain; charset=utf-8",
    },
    Asset {
        name: "vendor/LICENSE-tfjs",
        bytes: include_bytes!("../../face/vendor/LICENSE-tfjs"),
        content_type: "text/plain; charset=utf-8",
    },
];

/// Each asset's `ETag`: a hash of its bytes (FNV-1a, 64 bits), worked out on first use.
fn etag(index: usize) -> &'static str {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = a.bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
                format!("\"{hash:016x}\"")
            })
            .collect()
    });
    tags.get(index).map_or("\"\"", String::as_str)
}

/// `GET /static/{*path}`: an embedded file, or 404 in the API's error shape.
pub(crate) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == path) else {
        return ApiError::not_found("no such static file").into_response();
    };
    let tag = etag(index);
    let Ok(tag_value) = HeaderValue::from_str(tag) else {
        return ApiError::internal("an asset's ETag is not a header value").into_response();
    };
    let cache = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=86400"),
        ),
        (header::ETAG, tag_value),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        cache,
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_bytes_and_a_unique_name() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.bytes.is_empty(), "{} is empty", a.name);
            assert!(
                ASSETS[i + 1..].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
    }

    #[tokio::test]
    async fn files_come_with_their_type_and_revalidate_by_etag() {
        let script = asset(Path("vendor/face-api.js".into()), HeaderMap::new()).await;
        assert_eq!(script.status(), StatusCode::OK);
        assert_eq!(
            script.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let tag = script.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag.clone());
        let cached = asset(Path("vendor/face-api.js".into()), again.clone()).await;
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        let other = asset(Path("icon.svg".into()), again).await;
        assert_eq!(other.status(), StatusCode::OK, "another file, another tag");
        assert_ne!(other.headers()[header::ETAG], tag);
        let missing = asset(Path("../face.html".into()), HeaderMap::new()).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_manifest_points_at_icons_that_exist() {
        let manifest: serde_json::Value =
            serde_json::from_slice(ASSETS[0].bytes).expect("the manifest is JSON");
        assert_eq!(manifest["display"], "fullscreen");
        let icons = manifest["icons"].as_array().expect("icons");
        assert!(!icons.is_empty());
        for icon in icons {
            let src = icon["src"].as_str().expect("src");
            let name = src.strip_prefix("/static/").expect("under /static/");
            assert!(ASSETS.iter().any(|a| a.name == name), "{src} is not served");
        }
    }
}
