// Our transcription (not a copy) of how MLCChat for Android reads its configs, to run our JSON through
// the same Gson + Kotlin null-safety path the app takes at launch.
// Mirrors mlc-ai/mlc-llm android/MLCChat/app/src/main/java/ai/mlc/mlcchat/AppViewModel.kt (HEAD 79d603f0):
//   the data classes AppConfig, ModelRecord, ModelConfig, ParamsRecord, ParamsConfig (field names and
//   nullability), AppViewModel.loadAppConfig (app config, then <files dir>/<model_id>/mlc-chat-config.json,
//   else a download from <model_url>/resolve/main/), addModelConfig (model_url.endsWith), and
//   ModelState.switchToIndexing (tensor-cache.json records and tokenizer_files present => Finished).
// Usage: java -cp check.jar:gson.jar MLCChatConfigKt <mlc-app-config.json> <external files dir>
// Prints one line per model: "<model_id>\t<state>\t<system://lib>\t<model_url>"; an exception means the
// app would crash the same way.
import com.google.gson.Gson
import com.google.gson.annotations.SerializedName
import java.io.File

data class AppConfig(
    @SerializedName("model_libs") var modelLibs: MutableList<String>,
    @SerializedName("model_list") val modelList: MutableList<ModelRecord>
)

data class ModelRecord(
    @SerializedName("model_url") val modelUrl: String,
    @SerializedName("model_id") val modelId: String,
    @SerializedName("estimated_vram_bytes") val estimatedVramBytes: Long?,
    @SerializedName("model_lib") val modelLib: String
)

data class ModelConfig(
    @SerializedName("model_lib") var modelLib: String,
    @SerializedName("model_id") var modelId: String,
    @SerializedName("estimated_vram_bytes") var estimatedVramBytes: Long?,
    @SerializedName("tokenizer_files") val tokenizerFiles: List<String>,
    @SerializedName("context_window_size") val contextWindowSize: Int,
    @SerializedName("prefill_chunk_size") val prefillChunkSize: Int
)

data class ParamsRecord(@SerializedName("dataPath") val dataPath: String)

data class ParamsConfig(@SerializedName("records") val paramsRecords: List<ParamsRecord>)

fun main(args: Array<String>) {
    val gson = Gson()
    val filesDir = File(args[1])
    val appConfig = gson.fromJson(File(args[0]).readText(), AppConfig::class.java)
    appConfig.modelLibs = mutableListOf()
    for (record in appConfig.modelList) {
        appConfig.modelLibs.add(record.modelLib)
        val modelDir = File(filesDir, record.modelId)
        val configFile = File(modelDir, "mlc-chat-config.json")
        if (!configFile.exists()) {
            val url = if (record.modelUrl.endsWith("/")) record.modelUrl else "${record.modelUrl}/"
            println("${record.modelId}\tdownload\t\t${url}resolve/main/mlc-chat-config.json")
            continue
        }
        val modelConfig = gson.fromJson(configFile.readText(), ModelConfig::class.java)
        modelConfig.modelId = record.modelId
        modelConfig.modelLib = record.modelLib
        modelConfig.estimatedVramBytes = record.estimatedVramBytes
        val modelUrl = record.modelUrl + if (record.modelUrl.endsWith("/")) "" else "/"
        val params = gson.fromJson(File(modelDir, "tensor-cache.json").readText(), ParamsConfig::class.java)
        val needed = modelConfig.tokenizerFiles + params.paramsRecords.map { it.dataPath }
        val missing = needed.filter { !File(modelDir, it).exists() }
        val state = if (missing.isEmpty()) "Finished" else "Paused(${missing.size} to download)"
        require(appConfig.modelLibs.contains(modelConfig.modelLib))
        println("${modelConfig.modelId}\t$state\tsystem://${modelConfig.modelLib}\t$modelUrl")
    }
}
