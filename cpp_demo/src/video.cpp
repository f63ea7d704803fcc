// Frames from OpenCV's videoio: video files (FFmpeg), image sequences, V4L2 cameras, GStreamer pipelines; and frames
// to a video file (the overlay video).
#include <algorithm>
#include <cctype>

#include "canvit/canvit.hpp"

#ifdef CANVIT_WITH_OPENCV
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <opencv2/videoio/registry.hpp>
#endif

namespace canvit {

#ifdef CANVIT_WITH_OPENCV
namespace {

class VideoSource : public FrameSource {
   public:
    explicit VideoSource(const std::string& spec) : spec_(spec) {
        cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);  // not a WARN line at a sequence's end
        const bool index = !spec.empty() && std::all_of(spec.begin(), spec.end(), [](unsigned char c) { return std::isdigit(c); });
        if (index) {
            kind_ = "camera " + spec;
            capture_.open(std::stoi(spec), cv::CAP_ANY);
        } else if (spec.find('!') != std::string::npos) {
            kind_ = "GStreamer pipeline";
            capture_.open(spec, cv::CAP_GSTREAMER);
        } else if (spec.rfind("/dev/video", 0) == 0) {
            kind_ = "V4L2 camera " + spec;
            capture_.open(spec, cv::CAP_V4L2);
        } else {
            const bool sequence = spec.find('%') != std::string::npos;
            if (!sequence && !std::filesystem::is_regular_file(spec))
                throw Error(spec + ": no such video file; pass a video file, an image sequence like frames/%03d.png, "
                                   "a camera index or /dev/videoN, or a GStreamer pipeline ending in appsink");
            kind_ = sequence ? "image sequence" : "video file";
            capture_.open(spec, sequence ? cv::CAP_IMAGES : cv::CAP_ANY);
        }
        if (!capture_.isOpened())
            throw Error(spec + ": OpenCV cannot open this " + kind_ +
                        " (check the codec, the device's permissions, or the pipeline; OpenCV built with " +
                        (cv::videoio_registry::hasBackend(cv::CAP_GSTREAMER) ? "" : "no ") + "GStreamer)");
    }
    bool next(RgbImage& frame) override {
        if (!capture_.read(bgr_) || bgr_.empty()) return false;
        if (bgr_.depth() != CV_8U) bgr_.convertTo(bgr_, CV_8U);
        if (bgr_.channels() == 1) cv::cvtColor(bgr_, rgb_, cv::COLOR_GRAY2RGB);
        else if (bgr_.channels() == 4) cv::cvtColor(bgr_, rgb_, cv::COLOR_BGRA2RGB);
        else cv::cvtColor(bgr_, rgb_, cv::COLOR_BGR2RGB);
        frame.width = rgb_.cols, frame.height = rgb_.rows;
        frame.pixels.resize(size_t(rgb_.cols) * rgb_.rows * 3);
        for (int y = 0; y < rgb_.rows; ++y)
            std::copy_n(rgb_.ptr<unsigned char>(y), size_t(rgb_.cols) * 3, frame.pixels.data() + size_t(y) * rgb_.cols * 3);
        return true;
    }
    std::string description() const override { return kind_ + " " + spec_; }

   private:
    std::string spec_, kind_;
    cv::VideoCapture capture_;
    cv::Mat bgr_, rgb_;
};

class VideoSink : public FrameSink {
   public:
    VideoSink(const std::filesystem::path& path, int width, int height, double fps) : width_(width), height_(height) {
        const std::string extension = path.extension().string();
        if (extension != ".avi" && extension != ".mp4")
            throw Error(path.string() + ": name the overlay video *.avi (Motion JPEG) or *.mp4 (MPEG-4, with FFmpeg)");
        const bool avi = extension == ".avi";
        writer_.open(path.string(), avi ? cv::CAP_OPENCV_MJPEG : cv::CAP_ANY,
                     avi ? cv::VideoWriter::fourcc('M', 'J', 'P', 'G') : cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps,
                     cv::Size(width, height));
        if (!writer_.isOpened())
            throw Error(path.string() + ": OpenCV cannot write this video (" + (avi ? "check the folder is writable" :
                        "no MPEG-4 encoder here: name it *.avi") + ")");
    }
    void write(const RgbImage& frame) override {
        if (frame.width != width_ || frame.height != height_) throw Error("overlay frame of another size than the video's");
        const cv::Mat rgb(frame.height, frame.width, CV_8UC3, const_cast<unsigned char*>(frame.pixels.data()));
        cv::cvtColor(rgb, bgr_, cv::COLOR_RGB2BGR);
        writer_.write(bgr_);
    }

   private:
    int width_, height_;
    cv::VideoWriter writer_;
    cv::Mat bgr_;
};

}  // namespace

std::unique_ptr<FrameSource> open_video(const std::string& spec) { return std::make_unique<VideoSource>(spec); }
std::unique_ptr<FrameSink> open_video_writer(const std::filesystem::path& path, int width, int height, double fps) {
    return std::make_unique<VideoSink>(path, width, height, fps);
}
#else
std::unique_ptr<FrameSource> open_video(const std::string& spec) {
    throw Error("--video " + spec + ": this canvit_demo was built without OpenCV; apt-get install libopencv-dev "
                "(on a Jetson it comes with JetPack) and rebuild");
}
std::unique_ptr<FrameSink> open_video_writer(const std::filesystem::path& path, int, int, double) {
    throw Error("--overlay-video " + path.string() + ": this canvit_demo was built without OpenCV; apt-get install "
                "libopencv-dev (on a Jetson it comes with JetPack) and rebuild");
}
#endif

}  // namespace canvit
